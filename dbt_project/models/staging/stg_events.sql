{#- Silver events as the marts see them: UTC event day, the actor, and the lake's day and hour
    directories (filtering on lake_date reads only that day's files). -#}
{%- set silver = source('silver', 'events') -%}

with source as (
    {% if lake_has_files(lake_path('silver/events/*/*/*.parquet')) %}
        select * from {{ silver }}
    {% else %}
        select
            cast(null as varchar) as event_id,
            cast(null as varchar) as event_type,
            cast(null as timestamptz) as event_time,
            cast(null as timestamptz) as event_hour,
            cast(null as varchar) as device_id,
            cast(null as varchar) as user_id,
            cast(null as varchar) as session_id,
            cast(null as varchar) as platform,
            cast(null as varchar) as title_id,
            cast(null as varchar) as campaign_id,
            cast(null as varchar) as ad_id,
            cast(null as varchar) as page,
            cast(null as varchar) as app_version,
            cast(null as bigint) as position_ms,
            cast(null as bigint) as schema_version,
            cast(null as varchar) as properties,
            cast(null as boolean) as clock_corrected,
            cast(null as timestamptz) as received_at,
            cast(null as integer) as kafka_partition,
            cast(null as bigint) as kafka_offset,
            cast(null as timestamptz) as ingest_hour,
            cast(null as date) as date,
            cast(null as bigint) as hour
        where false
    {% endif %}
),

renamed as (
    select
        event_id,
        event_type,
        event_time,
        event_hour,
        device_id,
        user_id,
        session_id,
        platform,
        title_id,
        campaign_id,
        ad_id,
        page,
        app_version,
        position_ms,
        schema_version,
        properties,
        clock_corrected,
        received_at,
        kafka_partition,
        kafka_offset,
        ingest_hour,
        cast(date as date) as lake_date,
        cast(hour as integer) as lake_hour
    from source
),

final as (
    select
        *,
        cast(timezone('UTC', event_time) as date) as event_date,
        coalesce(user_id, 'device:' || device_id) as actor_id
    from renamed
)

select * from final
