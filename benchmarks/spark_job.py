"""The bronze -> silver -> marts job of benchmarks/bench.py on Spark local[2]: the contract's
parse, validation, future-clock rule, first-received dedup and the five marts, from the same
bronze Parquet. Prints total seconds, seconds after the JVM is up, and clean rows.

    python benchmarks/spark_job.py LAKE_DIR OUT_DIR
"""

import sys
import time

began = time.perf_counter()
from pyspark.sql import SparkSession, Window  # noqa: E402  (the import is timed)
from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql import types as T  # noqa: E402

from core.contract import STRING_FIELDS  # noqa: E402  (the contract's own field list)

spark = (
    SparkSession.builder.master("local[2]")
    .appName("bench")
    .config("spark.sql.session.timeZone", "UTC")
    .config("spark.ui.enabled", "false")
    .config("spark.ui.showConsoleProgress", "false")
    .config(
        "spark.sql.ansi.enabled", "false"
    )  # malformed values become null, as in DuckDB's try_cast
    .config("spark.sql.shuffle.partitions", "8")
    .getOrCreate()
)
spark.sparkContext.setLogLevel("ERROR")
started = time.perf_counter()
lake, out = sys.argv[1], sys.argv[2]
bronze = spark.read.parquet(lake + "/bronze/*/*/*.parquet")
schema = T.StructType([T.StructField(n, T.StringType()) for n in STRING_FIELDS])
parsed = bronze.withColumn("j", F.from_json(F.col("value").cast("string"), schema))
e = parsed.select("kafka_partition", "kafka_offset", "kafka_timestamp", "j.*")
device_time = F.to_timestamp("event_time")
e = e.withColumn("device_time", device_time).withColumn(
    "event_time",
    F.when(
        F.col("device_time") > F.col("kafka_timestamp") + F.expr("interval 5 minutes"),
        F.col("kafka_timestamp"),
    ).otherwise(F.col("device_time")),
)


def nonempty(c):
    return F.col(c).isNotNull() & (F.col(c) != "")


valid = (
    nonempty("event_id")
    & nonempty("device_id")
    & F.col("event_time").isNotNull()
    & F.col("event_type").isin(
        "page_view", "click", "play", "pause", "seek", "ad_impression", "heartbeat"
    )
    & (~F.col("event_type").isin("play", "pause", "seek") | nonempty("title_id"))
    & ((F.col("event_type") != "ad_impression") | nonempty("campaign_id"))
)
first = Window.partitionBy("event_id").orderBy("kafka_timestamp", "kafka_partition", "kafka_offset")
clean = (
    e.filter(valid)
    .withColumn("n", F.row_number().over(first))
    .filter("n = 1")
    .withColumn("event_date", F.to_date("event_time"))
    .withColumn("event_hour", F.date_trunc("hour", "event_time"))
    .withColumn("actor", F.coalesce("user_id", F.concat(F.lit("device:"), "device_id")))
    .withColumn(
        "platform",
        F.when(
            F.lower("platform").isin("web", "ios", "android", "tv", "stb"), F.lower("platform")
        ).otherwise("other"),
    )
)
clean.write.mode("overwrite").parquet(out + "/silver")
clean = spark.read.parquet(out + "/silver")
marts = {
    "dau": clean.groupBy("event_date").agg(
        F.countDistinct("actor").alias("active_users"),
        F.countDistinct("user_id").alias("logged_in_users"),
        F.countDistinct("device_id").alias("active_devices"),
        F.count("*").alias("events"),
    ),
    "by_platform": clean.groupBy("event_date", "platform").agg(
        F.countDistinct("actor").alias("active_users")
    ),
    "title_plays": clean.filter("event_type = 'play'")
    .groupBy("event_date", "title_id")
    .agg(F.count("*").alias("plays"), F.countDistinct("actor").alias("unique_viewers")),
    "campaigns": clean.filter("event_type = 'ad_impression'")
    .groupBy("event_date", "campaign_id")
    .agg(F.count("*").alias("impressions"), F.countDistinct("actor").alias("unique_viewers")),
    "hourly": clean.groupBy("event_hour", "event_type").agg(
        F.count("*").alias("events"), F.countDistinct("actor").alias("active_users")
    ),
}
for name, frame in marts.items():
    frame.write.mode("overwrite").parquet(out + "/" + name)
done = time.perf_counter()
print(f"{done - began:.3f} {done - started:.3f} {clean.count()}")
