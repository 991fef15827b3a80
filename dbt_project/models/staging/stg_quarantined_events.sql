{#- Every quarantined message, from landing and from cleaning, in one schema. -#}
{%- set files = [] -%}
{%- for stage in ['cleaning', 'landing'] -%}
    {%- set relation = lake_source('quarantine', stage) -%}
    {%- if lake_has_files(lake_path('quarantine/' ~ stage ~ '/*/*/*.parquet')) -%}
        {%- do files.append(relation | string) -%}
    {%- endif -%}
{%- endfor -%}

with source as (
    {% if files %}
        select
            stage,
            reason,
            kafka_partition,
            kafka_offset,
            kafka_timestamp,
            kafka_key,
            value,
            ingest_hour,
            event_hour
        from read_parquet([{{ files | join(', ') }}], union_by_name = true)
    {% else %}
        {{ empty_relation({
            'stage': 'varchar', 'reason': 'varchar', 'kafka_partition': 'integer',
            'kafka_offset': 'bigint', 'kafka_timestamp': 'timestamptz', 'kafka_key': 'blob',
            'value': 'blob', 'ingest_hour': 'timestamptz', 'event_hour': 'timestamptz'
        }) }}
    {% endif %}
),

final as (
    select
        *,
        cast(timezone('UTC', coalesce(event_hour, ingest_hour)) as date) as quarantine_date
    from source
)

select * from final
