{#- Silver events as the marts see them: UTC event day, the actor, and the lake's day and hour
    directories (filtering on lake_date reads only that day's files). -#}
{%- set silver = lake_source('silver', 'events') -%}

with source as (
    {% if lake_has_files(lake_path('silver/events/*/*/*.parquet')) %}
        select * from {{ silver }}
    {% else %}
        {{ empty_relation({
            'event_id': 'varchar', 'event_type': 'varchar', 'event_time': 'timestamptz',
            'event_hour': 'timestamptz', 'device_id': 'varchar', 'user_id': 'varchar',
            'session_id': 'varchar', 'platform': 'varchar', 'title_id': 'varchar',
            'campaign_id': 'varchar', 'ad_id': 'varchar', 'page': 'varchar',
            'app_version': 'varchar', 'position_ms': 'bigint', 'schema_version': 'bigint',
            'properties': 'varchar', 'clock_corrected': 'boolean',
            'received_at': 'timestamptz', 'kafka_partition': 'integer',
            'kafka_offset': 'bigint', 'ingest_hour': 'timestamptz', 'date': 'date',
            'hour': 'bigint'
        }) }}
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
        {{ actor_id() }} as actor_id
    from renamed
)

select * from final
