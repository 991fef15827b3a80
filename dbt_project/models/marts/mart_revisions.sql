{#- One row per restatement: a mart period rebuilt with different numbers after it was final. -#}
{{ config(incremental_strategy='append') }}

with source as (
    {% for mart, period in var('marts').items() %}
        select distinct
            '{{ mart }}' as model,
            {% if period == 'event_hour' %}
                cast(timezone('UTC', event_hour) as date) as event_date,
                event_hour,
                event_hour + interval 1 hour as period_end,
            {% else %}
                event_date,
                cast(null as timestamptz) as event_hour,
                timezone('UTC', cast(event_date as timestamp)) + interval 1 day as period_end,
            {% endif %}
            revision,
            computed_at as revised_at
        from {{ ref(mart) }}
        where
            {{ day_partition_filter(period) }}
            and revision >= 2
            and computed_at = {{ as_of_literal() }}
        {% if not loop.last %}union all{% endif %}
    {% endfor %}
),

renamed as (
    select
        model,
        event_date,
        event_hour,
        period_end + {{ allowed_lateness() }} as finalized_at,
        revision,
        revised_at
    from source
),

restatements as (
    select * from renamed as r  -- noqa: AL05
    {% if is_incremental() %}
        where not exists (
            select 1 from {{ this }} as t
            where
                t.model = r.model
                and t.event_date = r.event_date
                and t.event_hour is not distinct from r.event_hour
                and t.revision = r.revision
        )
    {% endif %}
),

day_events as (
    select
        event_date,
        event_hour,
        ingest_hour,
        events
    from {{ ref('int_hourly_activity') }}
    where {{ event_date_filter() }}
),

already_listed as (
    {% if is_incremental() %}
        select
            model,
            event_date,
            event_hour,
            unnest(late_ingest_hours) as ingest_hour
        from {{ this }}
        where {{ event_date_filter() }}
    {% else %}
        {{ empty_relation({
            'model': 'varchar', 'event_date': 'date', 'event_hour': 'timestamptz',
            'ingest_hour': 'timestamptz'
        }) }}
    {% endif %}
),

late_events as (
    select
        r.model,
        r.event_date,
        r.event_hour,
        r.revision,
        e.ingest_hour,
        e.events
    from restatements as r
    inner join day_events as e
        on
            r.event_date = e.event_date
            and (r.event_hour is null or r.event_hour = e.event_hour)
    where
        e.ingest_hour >= r.finalized_at
        and not exists (
            select 1 from already_listed as a
            where
                a.model = r.model
                and a.event_date = r.event_date
                and a.event_hour is not distinct from r.event_hour
                and a.ingest_hour = e.ingest_hour
        )
),

late_summary as (
    select
        model,
        event_date,
        event_hour,
        revision,
        cast(sum(events) as bigint) as late_events,
        list_sort(list_distinct(list(ingest_hour))) as late_ingest_hours
    from late_events
    group by model, event_date, event_hour, revision
),

final as (
    select
        r.model,
        r.event_date,
        r.event_hour,
        r.revision,
        r.revised_at,
        coalesce(l.late_events, 0) as late_events,
        coalesce(l.late_ingest_hours, cast([] as timestamptz [])) as late_ingest_hours
    from restatements as r
    left join late_summary as l
        on
            r.model = l.model
            and r.event_date = l.event_date
            and r.event_hour is not distinct from l.event_hour
            and r.revision = l.revision
)

select * from final
