{#- Every quarantined message, from landing and from cleaning, in one schema. -#}
{%- set files = [] -%}
{%- for stage in ['cleaning', 'landing'] -%}
    {%- set relation = source('quarantine', stage) -%}
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
        select
            cast(null as varchar) as stage,
            cast(null as varchar) as reason,
            cast(null as integer) as kafka_partition,
            cast(null as bigint) as kafka_offset,
            cast(null as timestamptz) as kafka_timestamp,
            cast(null as blob) as kafka_key,
            cast(null as blob) as value,
            cast(null as timestamptz) as ingest_hour,
            cast(null as timestamptz) as event_hour
        where false
    {% endif %}
),

final as (
    select
        *,
        cast(timezone('UTC', coalesce(event_hour, ingest_hour)) as date) as quarantine_date
    from source
)

select * from final
