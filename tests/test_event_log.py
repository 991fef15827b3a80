"""Decoding a fetch response's record set: record batches written by kafka-python's own batch
builder (an encoder independent of the decoder), with what brokers put in a record set besides
plain records: compressed batches, transaction markers, offsets emptied by compaction, a
fetch that starts inside a batch, and a partial batch at the end."""

from __future__ import annotations

import struct

import crc32c
import pyarrow as pa
import pytest
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBatchBuilder

from resources.event_log import RECORD_SCHEMA, decode_records

ZSTD, NONE = 4, 0
CONTROL = 0x20  # the batch attribute of a transaction marker


def record_batch(
    base: int,
    records: list[tuple[int, int, bytes | None, bytes | None]],
    *,
    codec: int = NONE,
    last_delta: int | None = None,
    attributes: int = 0,
) -> bytes:
    """A v2 record batch at `base` of (offset delta, timestamp, key, value) records; the last
    offset delta and attribute bits can be set as compaction and markers leave them."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for delta, timestamp, key, value in records:
        builder.append(delta, timestamp=timestamp, key=key, value=value, headers=[])
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base)  # base offset: outside the checksum
    if last_delta is not None:
        struct.pack_into(">i", data, 23, last_delta)
    struct.pack_into(">h", data, 21, struct.unpack_from(">h", data, 21)[0] | attributes)
    struct.pack_into(">I", data, 17, crc32c.crc32c(bytes(data[21:])))
    return bytes(data)


def rows(batch: pa.RecordBatch) -> list[tuple]:
    return list(
        zip(
            batch.column("kafka_offset").to_pylist(),
            batch.column("kafka_timestamp").cast(pa.int64()).to_pylist(),
            batch.column("kafka_key").to_pylist(),
            batch.column("value").to_pylist(),
            strict=True,
        )
    )


T = 1_700_000_000_000
FIRST = [(i, T + i, b"k%d" % i, b'{"n": %d}' % i) for i in range(5)]  # offsets 100-104
MARKER = [(0, T, b"\x00\x00\x00\x00", b"\x00\x00\x00\x00\x00\x00")]  # offset 105
SECOND = [(0, T + 10, None, b"a"), (1, T + 11, b"k", None), (3, T + 13, b"k", b"c")]  # 106-

RECORD_SET = (
    record_batch(100, FIRST, codec=ZSTD)
    + record_batch(105, MARKER, attributes=CONTROL)
    # compaction removed offset 108 and the batch's last record (offset 110)
    + record_batch(106, SECOND, last_delta=4)
)


def test_a_record_set_decodes_to_its_records_and_the_offset_after_its_last_batch():
    batch, after = decode_records(3, RECORD_SET, 100)
    assert batch.schema == RECORD_SCHEMA
    assert set(batch.column("kafka_partition").to_pylist()) == {3}
    assert rows(batch) == [
        (100, T, b"k0", b'{"n": 0}'),
        (101, T + 1, b"k1", b'{"n": 1}'),
        (102, T + 2, b"k2", b'{"n": 2}'),
        (103, T + 3, b"k3", b'{"n": 3}'),
        (104, T + 4, b"k4", b'{"n": 4}'),
        (106, T + 10, None, b"a"),
        (107, T + 11, b"k", None),
        (109, T + 13, b"k", b"c"),
    ]
    assert after == 111  # past the compacted offsets the last batch still covers


def test_a_fetch_inside_a_compressed_batch_and_an_end_inside_another_read_exactly_the_range():
    batch, after = decode_records(0, RECORD_SET, 102, 108)
    assert batch.column("kafka_offset").to_pylist() == [102, 103, 104, 106, 107]
    assert after == 108


def test_a_trailing_partial_batch_waits_for_the_next_fetch():
    truncated = RECORD_SET + record_batch(111, FIRST)[:-7]
    batch, after = decode_records(0, truncated, 100)
    assert batch.num_rows == 8
    assert after == 111


def test_only_a_marker_moves_the_position_past_it():
    batch, after = decode_records(0, record_batch(105, MARKER, attributes=CONTROL), 105)
    assert batch.num_rows == 0
    assert after == 106


def test_an_empty_record_set_stays_where_it_was():
    batch, after = decode_records(0, b"", 42)
    assert (batch.num_rows, after) == (0, 42)


def test_a_batch_that_fails_its_checksum_raises():
    damaged = bytearray(RECORD_SET)
    damaged[-3] ^= 0xFF
    with pytest.raises(CorruptRecordError, match="checksum"):
        decode_records(0, bytes(damaged), 100)
