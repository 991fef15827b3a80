{#- Rebuilds the hours whose rollup was rebuilt and the provisional ones (mart_head). -#}
{%- set hours_filter = day_partition_filter('event_hour') ~ ' and '
    ~ rebuilt_hours_filter('event_hour', finalizes=true) -%}
{{ mart_head() }},

aggregated as (
    select
        event_hour,
        event_type,
        cast(sum(events) as bigint) as events,
        count(distinct actor_id) as active_users
    from day_events
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
    partition_filter=hours_filter,
) }},

final as (
    select * from revised
)

select * from final
