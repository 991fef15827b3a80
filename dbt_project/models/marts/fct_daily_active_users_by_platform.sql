{{ mart_head() }},

aggregated as (
    select
        event_date,
        platform,
        count(distinct actor_id) as active_users
    from day_events
    group by event_date, platform
),

{{ with_revisions(
    'aggregated',
    keys=['platform'],
    measures=['active_users'],
) }},

final as (
    select * from revised
)

select * from final
