{%- set day_filter = day_partition_filter('event_hour') -%}
{{ config(meta={'partition_column': 'event_hour'}) }}

with source as (
    select * from {{ ref('stg_events') }}
    where lake_date = {{ event_date_literal() }}
),

renamed as (
    select
        event_hour,
        event_type,
        actor_id,
        event_id
    from source
),

aggregated as (
    select
        event_hour,
        event_type,
        count(event_id) as events,
        count(distinct actor_id) as active_users
    from renamed
    group by event_hour, event_type
),

{#- Each hour is finalized and revised on its own: an hour is final 3 h (the allowed lateness)
    after it ends, long before its day. #}
{{ with_revisions(
    'aggregated',
    period='event_hour',
    period_end="event_hour + interval 1 hour",
    keys=['event_type'],
    measures=['events', 'active_users'],
    partition_filter=day_filter,
) }},

final as (
    select * from revised
)

select * from final
