"""The lake's ledger, typed: the time keys, where every file lives, and what each partition
records it was built from. It is the system of record; Dagster's history is only a view of it.

- A landed ingest hour records its manifest (`bronze/_manifests/<hour>.json`, written last and
  exclusively): per Kafka partition the offset range `[start, end)`, the rows that exist there, and
  any offsets that were gone before they landed; the event-hour histogram; the future-clock
  corrections; the landing quarantine counts.
- The index (`bronze/_index/<event hour>/<ingest hour>`, empty objects written before the
  manifest) says which ingest hours hold events of an event hour, and the claims
  (`bronze/_claims/<hour>/<ingest hour>`) which ingest hours hold corrected copies whose device
  claimed that hour, so a run reads ledger files in proportion to its own work.
- A landing in progress keeps its plan and, per Kafka partition, its per-hour results
  (`bronze/_partials/<first hour>/<run>/`) until its commit records the manifests: they are
  not the ledger, and nothing reads them but that landing's own steps.
- The open hour may land in slices before it closes (`bronze/_slices/<hour>/<k>.json`, each
  written last and exclusively, like a manifest): slice k of each Kafka partition starts where
  slice k-1 (or the previous hour) ended and ends at the high watermark seen. The hour's landing
  at the close starts where the last slice ended, and its manifest lists the slices as the
  pieces of each partition's range; a slice the manifest does not list is swept.
- Copies of one event re-stamped into different event hours are found once per ingest hour, from
  its bronze and the hour's before (`bronze/_copies/<ingest hour>.parquet`): not the ledger but
  an index derived from final bronze, written by the first cleaning that needs it and dropped
  when either hour is re-landed.
- A clean event hour records, in its Parquet footers, the ingest hours it read (`CleanStamp`).
- A mart day records the clean stamps it read (the warehouse table `mart_stamps`), and each event
  hour's rows in the hourly rollup the clean stamp they were built from (`built_from`).
A partition is owed work exactly when what it records differs from what the ledger holds now.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

import pyarrow as pa

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

# --- time keys --------------------------------------------------------------------------------

HOUR_LABEL_FORMAT = "%Y-%m-%dT%H"
"""How the lake names an hour (manifest files, histograms, index entries)."""
HOUR_KEY_FORMAT = "%Y-%m-%d-%H:%M"
"""How Dagster names an hourly partition."""


def floor_hour(instant: datetime) -> datetime:
    return instant.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hour_label(hour: datetime) -> str:
    return hour.strftime(HOUR_LABEL_FORMAT)


@functools.lru_cache(maxsize=2**16)
def parse_hour_label(label: str) -> datetime:
    return datetime.strptime(label, HOUR_LABEL_FORMAT).replace(tzinfo=UTC)


def partition_key(hour: datetime) -> str:
    return hour.strftime(HOUR_KEY_FORMAT)


def hour_of_key(key: str) -> datetime:
    return datetime.strptime(key, HOUR_KEY_FORMAT).replace(tzinfo=UTC)


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def day_hours(day: date) -> list[datetime]:
    """The 24 UTC hours of `day`."""
    start = day_start(day)
    return [start + i * HOUR for i in range(24)]


# --- where files live ---------------------------------------------------------------------------

MANIFESTS = "bronze/_manifests"
INDEX = "bronze/_index"
CLAIMS = "bronze/_claims"
PARTIALS = "bronze/_partials"
COPIES = "bronze/_copies"
SLICES = "bronze/_slices"


def hour_dir(hour: datetime) -> str:
    return hour.strftime("date=%Y-%m-%d/hour=%H")


def _piece_name(partition: int, piece: int | None) -> str:
    return f"partition={partition}" + ("" if piece is None else f".slice-{piece}")


def bronze_file(hour: datetime, partition: int, piece: int | None = None) -> str:
    """A partition's bronze of an ingest hour: the whole range, or slice `piece` of it (the
    range after the last slice keeps the whole range's name)."""
    return f"bronze/{hour_dir(hour)}/{_piece_name(partition, piece)}.parquet"


def landing_quarantine_file(hour: datetime, partition: int, piece: int | None = None) -> str:
    return f"quarantine/landing/{hour_dir(hour)}/{_piece_name(partition, piece)}.parquet"


def events_file(hour: datetime) -> str:
    return f"silver/events/{hour_dir(hour)}/part-0000.parquet"


def copies_file(ingest_hour: datetime) -> str:
    return f"{COPIES}/{hour_label(ingest_hour)}.parquet"


def cleaning_quarantine_file(hour: datetime) -> str:
    return f"quarantine/cleaning/{hour_dir(hour)}/part-0000.parquet"


def manifest_path(hour: datetime) -> str:
    return f"{MANIFESTS}/{hour_label(hour)}.json"


def partials_dir(first_hour: datetime, token: str) -> str:
    """Where landing `token` (a run), whose first ingest hour is `first_hour`, keeps its plan
    and its partial entries until its commit records the manifests (never read as the ledger)."""
    return f"{PARTIALS}/{hour_label(first_hour)}/{token}"


def landing_plan_path(first_hour: datetime, token: str) -> str:
    return f"{partials_dir(first_hour, token)}/plan.json"


def partial_path(first_hour: datetime, token: str, partition: int) -> str:
    return f"{partials_dir(first_hour, token)}/partition={partition}.json"


def slices_dir(hour: datetime) -> str:
    return f"{SLICES}/{hour_label(hour)}"


def slice_path(hour: datetime, piece: int) -> str:
    return f"{slices_dir(hour)}/{piece}.json"


# --- what landing records -----------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionRange:
    """One Kafka partition's part of an ingest hour: offsets `[start, end)`, of which `rows`
    records exist (compaction and transaction markers leave gaps) and `[lost_start, lost_end)`
    were deleted by retention before they landed (empty when nothing was lost)."""

    start: int
    end: int
    rows: int
    file: str | None
    lost_start: int = 0
    lost_end: int = 0
    slice: int | None = None
    """The slice of the open hour this range is (None: a range landed after the hour closed)."""
    pieces: tuple[PartitionRange, ...] = ()
    """When the hour landed in slices: each slice, then the range landed at the close, in
    offset order; this range is their union and has no file of its own."""

    @property
    def lost(self) -> int:
        return self.lost_end - self.lost_start

    @property
    def parts(self) -> tuple[PartitionRange, ...]:
        """The ranges landed separately, each with its own file: the pieces, or this range."""
        return self.pieces or (self,)

    @property
    def files(self) -> list[str]:
        return [part.file for part in self.parts if part.file]

    def to_json(self) -> dict:
        # A range landed whole reads as it did before slices existed.
        data = asdict(self)
        del data["pieces"]
        if self.slice is None:
            del data["slice"]
        if self.pieces:
            data["pieces"] = [piece.to_json() for piece in self.pieces]
        return data

    @classmethod
    def from_json(cls, data: Mapping) -> PartitionRange:
        pieces = tuple(cls.from_json(piece) for piece in data.get("pieces", ()))
        return cls(**{**data, "pieces": pieces})

    @classmethod
    def union(cls, pieces: list[PartitionRange]) -> PartitionRange:
        """One partition's range of an hour landed in `pieces` (consecutive, oldest first):
        the one piece that holds anything, or their union listing those that do."""
        pieces = [piece for piece in pieces if piece.end > piece.start or piece.lost] or [
            pieces[-1]
        ]
        if len(pieces) == 1:
            return pieces[0]
        lost = [piece for piece in pieces if piece.lost]
        return cls(
            start=pieces[0].start,
            end=pieces[-1].end,
            rows=sum(piece.rows for piece in pieces),
            file=None,
            lost_start=lost[0].lost_start if lost else 0,
            lost_end=lost[-1].lost_end if lost else 0,
            pieces=tuple(pieces),
        )


@dataclass(frozen=True)
class CorrectedCopy:
    """A valid copy whose event time was corrected: its coordinates decide which copy counts."""

    event_id: str
    kafka_partition: int
    kafka_offset: int
    kafka_timestamp_ms: int
    event_hour: str
    device_hour: str


CORRECTED_ARRIVALS = pa.schema(
    [
        ("event_id", pa.string()),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
        ("kafka_timestamp_ms", pa.int64()),
    ]
)


@dataclass(frozen=True)
class Manifest:
    """What an ingest hour landed; immutable once written."""

    ingest_hour: datetime
    topic: str
    partitions: dict[int, PartitionRange]
    event_hours: dict[datetime, int]
    quarantined: dict[str, int] = field(default_factory=dict)
    corrected: tuple[CorrectedCopy, ...] = ()
    future_timestamps: int = 0
    landed_at: str = ""

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.partitions.values())

    @property
    def late_rows(self) -> int:
        return sum(n for hour, n in self.event_hours.items() if hour < self.ingest_hour)

    @property
    def ends(self) -> dict[int, int]:
        return {p: r.end for p, r in self.partitions.items()}

    def lost_ranges(self) -> dict[int, tuple[int, int]]:
        return {p: (r.lost_start, r.lost_end) for p, r in self.partitions.items() if r.lost}

    @functools.cached_property
    def claimed_hours(self) -> frozenset[datetime]:
        """Hours the devices of corrected copies claimed: an uncorrected retry may sit there.
        Computed once a manifest, as are its corrected arrivals: a cleaning run asks for them
        for every hour it builds from the manifest."""
        return frozenset(parse_hour_label(c.device_hour) for c in self.corrected)

    @functools.cached_property
    def corrected_arrivals(self) -> pa.Table:
        """The corrected copies' event ids and arrivals (`CORRECTED_ARRIVALS`)."""
        columns = ["event_id", "kafka_partition", "kafka_offset", "kafka_timestamp_ms"]
        return pa.table(
            {name: [getattr(c, name) for c in self.corrected] for name in columns},
            schema=CORRECTED_ARRIVALS,
        )

    def hours_to_rebuild(self) -> list[datetime]:
        """The event hours this landing affects: those it holds events of, and the claimed
        hours up to this ingest hour (a retry sits in a claimed hour only once it is no longer
        in the future, so later claimed hours hold none yet; their own landing names them)."""
        claimed = {h for h in self.claimed_hours if h <= self.ingest_hour}
        return sorted(set(self.event_hours) | claimed)

    def to_json(self) -> dict:
        return {
            "ingest_hour": hour_label(self.ingest_hour),
            "topic": self.topic,
            "partitions": {str(p): r.to_json() for p, r in sorted(self.partitions.items())},
            "rows": self.rows,
            "event_hours": {hour_label(h): n for h, n in sorted(self.event_hours.items())},
            "quarantined": dict(sorted(self.quarantined.items())),
            "corrected": [asdict(c) for c in self.corrected],
            "future_timestamps": self.future_timestamps,
            "landed_at": self.landed_at,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Manifest:
        return cls(
            ingest_hour=parse_hour_label(data["ingest_hour"]),
            topic=data["topic"],
            partitions={int(p): PartitionRange.from_json(r) for p, r in data["partitions"].items()},
            event_hours={parse_hour_label(h): int(n) for h, n in data["event_hours"].items()},
            quarantined=dict(data.get("quarantined", {})),
            corrected=tuple(CorrectedCopy(**c) for c in data.get("corrected", [])),
            future_timestamps=int(data.get("future_timestamps", 0)),
            landed_at=data.get("landed_at", ""),
        )


# --- what cleaning and the marts record -------------------------------------------------------


STAMP_KEY = b"clickstream.stamp"
"""Parquet footer key of a clean stamp: the stamp travels inside the file it describes, so one
rename commits both and no reader can see data with another run's stamp."""


@dataclass(frozen=True)
class CleanStamp:
    """What a clean event hour was built from, and what it counted."""

    event_hour: datetime
    inputs: tuple[datetime, ...]
    """The ingest hours read: the index and the claims of the hour when it was built."""
    events: int = 0
    duplicates: int = 0
    quarantined: int = 0
    bronze_rows: int = 0
    cleaned_at: str = ""

    def to_bytes(self) -> bytes:
        data = asdict(self) | {
            "event_hour": hour_label(self.event_hour),
            "inputs": [hour_label(h) for h in self.inputs],
        }
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> CleanStamp:
        data = json.loads(raw)
        return cls(
            **data
            | {
                "event_hour": parse_hour_label(data["event_hour"]),
                "inputs": tuple(parse_hour_label(h) for h in data["inputs"]),
            }
        )


def inputs_digest(stamps: Iterable[CleanStamp]) -> str:
    """A day's inputs as one value: which hours were clean, from which ingest hours."""
    text = ";".join(
        f"{hour_label(s.event_hour)}<{','.join(hour_label(h) for h in s.inputs)}"
        for s in sorted(stamps, key=lambda s: s.event_hour)
    )
    return hashlib.sha1(text.encode()).hexdigest()


def rollup_digests(stamps: Iterable[CleanStamp], version: str) -> dict[datetime, str]:
    """What each clean event hour's hourly rollup is built from: the hour's whole clean stamp
    (every re-clean changes it, even from the same inputs) and the rollup SQL's `version`."""
    return {s.event_hour: hashlib.sha1(s.to_bytes() + version.encode()).hexdigest() for s in stamps}


def owed_rollup_hours(
    day: date, current: Mapping[datetime, str], built: Mapping[datetime, str]
) -> dict[int, str | None]:
    """The hours of `day` (0-23) whose hourly rollup is rebuilt from silver, each with the digest
    of what its silver holds now: those whose digest differs from the one their rollup was built
    from. An hour without a clean stamp (None) is always rebuilt: nothing says what its silver
    holds, and without silver it reads nothing."""
    return {
        h.hour: current.get(h)
        for h in day_hours(day)
        if h not in current or current[h] != built.get(h)
    }


@dataclass(frozen=True)
class MartStamp:
    """What a mart day was built from (the warehouse table `mart_stamps`)."""

    event_date: date
    inputs_digest: str
    is_final: bool
    landed_through: datetime


def day_final_at(day: date, lateness: timedelta) -> datetime:
    """The landed watermark at which a day becomes final: its end plus the allowed lateness."""
    return day_start(day) + DAY + lateness


# --- reading and writing the ledger -------------------------------------------------------------


class LakeFiles(Protocol):
    """What the ledger needs of the lake (resources.lake.LakeResource provides it)."""

    def list(self, relative: str) -> list[str]: ...
    def list_nested(self, relative: str, prefix: str) -> list[tuple[str, str]]: ...
    def read_jsons(self, relatives: list[str]) -> list: ...
    def write_json(self, relative: str, obj, *, exclusive: bool = False) -> bool: ...
    def write_files(self, files: dict[str, bytes]) -> None: ...
    def footers_metadata(self, relatives: list[str]) -> list[dict[bytes, bytes] | None]: ...


def _label(name: str) -> datetime | None:
    """The hour a ledger file or directory is named after; None for a temporary (they start
    with a dot) or anything else that is not the ledger's."""
    if name.startswith("."):
        return None
    try:
        return parse_hour_label(name.removesuffix(".json"))
    except ValueError:
        return None


def _labels(names: Iterable[str]) -> list[datetime]:
    return sorted(hour for name in names if (hour := _label(name)) is not None)


class Ledger:
    """The ledger of one lake: every read and write of manifests, index and stamps.

    The index and the claims are listed a day at a time: one listing of a day's 24 hours (on S3
    one request) serves every hour of it. With `remember`, the ledger of one run or one sensor
    tick: each manifest and each day's listing is read once. Exact for the hours recorded when
    the run began (a manifest is immutable once recorded, and an hour's index and claims are
    written before its manifest), which is all a run reads; a ledger kept from one tick to the
    next must not remember."""

    def __init__(self, lake: LakeFiles, *, remember: bool = False) -> None:
        self.lake = lake
        self._manifests: dict[datetime, Manifest] | None = {} if remember else None
        self._listings: dict[tuple[str, date], dict[datetime, list[datetime]]] | None = (
            {} if remember else None
        )

    def recorded_hours(self) -> list[datetime]:
        """Ingest hours with a manifest, oldest first: one listing, no manifest read."""
        return _labels(self.lake.list(MANIFESTS))

    def manifest(self, hour: datetime) -> Manifest:
        return self.manifests([hour])[hour]

    def manifests(self, hours: Iterable[datetime]) -> dict[datetime, Manifest]:
        """The manifests of `hours`, oldest first; those not remembered read at once (on S3 one
        round trip)."""
        hours = sorted(set(hours))
        kept = self._manifests if self._manifests is not None else {}
        missing = [hour for hour in hours if hour not in kept]
        read = self.lake.read_jsons([manifest_path(hour) for hour in missing])
        found = dict(zip(missing, map(Manifest.from_json, read), strict=True))
        if self._manifests is not None:
            self._manifests.update(found)
        return {hour: kept[hour] if hour in kept else found[hour] for hour in hours}

    def head(self) -> Manifest | None:
        """The last recorded manifest: where landing goes on and how far it has come."""
        hours = self.recorded_hours()
        return self.manifest(hours[-1]) if hours else None

    def landed_through(self) -> datetime | None:
        """The instant through which every Kafka partition has landed: the end of the last
        recorded ingest hour (each manifest covers every partition)."""
        hours = self.recorded_hours()
        return hours[-1] + HOUR if hours else None

    def record(self, manifest: Manifest) -> bool:
        """Write the index and claims, then the manifest, exclusively: False when another
        landing recorded this hour first (its ranges stand)."""
        self.mark([manifest])
        return self.commit(manifest)

    def mark(self, manifests: Iterable[Manifest]) -> None:
        """Write the index and claims entries of manifests about to be committed, all at once
        (on S3 concurrent PUTs). An entry is ignored until its hour is recorded. If another
        landing records that hour first, as after a crash between entries and manifest, the
        entry may name an hour whose histogram holds none of its event hour's events: an input
        that reads no file of it."""
        entries: dict[str, bytes] = {}
        for manifest in manifests:
            label = hour_label(manifest.ingest_hour)
            entries |= {f"{INDEX}/{hour_label(h)}/{label}": b"" for h in manifest.event_hours}
            entries |= {f"{CLAIMS}/{hour_label(h)}/{label}": b"" for h in manifest.claimed_hours}
        self.lake.write_files(entries)

    def commit(self, manifest: Manifest) -> bool:
        """Write a marked manifest, last and exclusively: False when another landing recorded
        this hour first (its ranges stand)."""
        return self.lake.write_json(
            manifest_path(manifest.ingest_hour), manifest.to_json(), exclusive=True
        )

    def slices(self, hour: datetime) -> list[Manifest]:
        """The slices of `hour` recorded so far, in order (each a manifest of its own ranges)."""
        recorded = set()
        for name in self.lake.list(slices_dir(hour)):
            if name.endswith(".json") and name.removesuffix(".json").isdigit():
                recorded.add(int(name.removesuffix(".json")))
        count = next(k for k in range(len(recorded) + 1) if k not in recorded)
        read = self.lake.read_jsons([slice_path(hour, k) for k in range(count)])
        return [Manifest.from_json(data) for data in read]

    def sliced_hours(self) -> list[datetime]:
        """Hours with slices in the lake (recorded or in progress), oldest first."""
        return _labels(self.lake.list(SLICES))

    def record_slice(self, manifest: Manifest, piece: int) -> bool:
        """Write slice `piece` of the open hour, exclusively: False when another landing
        recorded that slice first (its ranges stand)."""
        return self.lake.write_json(
            slice_path(manifest.ingest_hour, piece), manifest.to_json(), exclusive=True
        )

    def _day_listing(self, root: str, day: date) -> dict[datetime, list[datetime]]:
        """Under `root` (the index or the claims), each hour of `day` with its ingest hours."""
        if self._listings is not None and (root, day) in self._listings:
            return self._listings[(root, day)]
        listed: dict[datetime, list[datetime]] = {}
        for directory, name in self.lake.list_nested(root, f"{day:%Y-%m-%d}T"):
            hour, ingest_hour = _label(directory), _label(name)
            if hour is not None and ingest_hour is not None:
                listed.setdefault(hour, []).append(ingest_hour)
        if self._listings is not None:
            self._listings[(root, day)] = listed
        return listed

    def _listed(self, root: str, hour: datetime, recorded: set[datetime] | None) -> list[datetime]:
        hours = self._day_listing(root, hour.date()).get(hour, [])
        # An entry whose manifest is missing is a landing that crashed before its commit.
        known = recorded if recorded is not None else set(self.recorded_hours())
        return sorted(h for h in hours if h in known)

    def sources(
        self, event_hour: datetime, recorded: set[datetime] | None = None
    ) -> list[datetime]:
        """The ingest hours holding events of `event_hour` (the index)."""
        return self._listed(INDEX, event_hour, recorded)

    def claims(self, hour: datetime, recorded: set[datetime] | None = None) -> list[datetime]:
        """The ingest hours holding corrected copies whose device claimed `hour`."""
        return self._listed(CLAIMS, hour, recorded)

    def inputs(self, event_hour: datetime, recorded: set[datetime] | None = None) -> tuple:
        """What a clean `event_hour` must be built from now: its sources and its claims."""
        recorded = recorded if recorded is not None else set(self.recorded_hours())
        sources = set(self.sources(event_hour, recorded))
        if not sources:
            return ()
        return tuple(sorted(sources | set(self.claims(event_hour, recorded))))

    def day_stamps(self, days: Iterable[date]) -> dict[date, list[CleanStamp]]:
        """The clean stamps of each day's 24 event hours (footer reads only, all at once)."""
        days = sorted(set(days))
        stamps = self.clean_stamps(hour for day in days for hour in day_hours(day))
        return {day: [stamps[h] for h in day_hours(day) if h in stamps] for day in days}

    def clean_stamps(self, event_hours: Iterable[datetime]) -> dict[datetime, CleanStamp]:
        """The stamps in the hours' silver files, of those ever cleaned: their footers read at
        once (on S3 one round trip)."""
        hours = sorted(set(event_hours))
        footers = self.lake.footers_metadata([events_file(hour) for hour in hours])
        return {
            hour: CleanStamp.from_bytes(metadata[STAMP_KEY])
            for hour, metadata in zip(hours, footers, strict=True)
            if metadata and STAMP_KEY in metadata
        }

    def clean_stamp(self, event_hour: datetime) -> CleanStamp | None:
        """The stamp in the hour's silver file, or None when it has never been cleaned."""
        return self.clean_stamps([event_hour]).get(event_hour)
