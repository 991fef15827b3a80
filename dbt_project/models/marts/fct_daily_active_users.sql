{{ mart_head() }},

-- Each day's (user, device) pairs once: an eighteenth of the rollup's rows on the 4M-event day,
-- so the three distinct counts below hash far fewer strings (and the actor is built per pair).
pairs as (
    select
        event_date,
        user_id,
        device_id,
        sum(events) as events
    from day_events
    group by event_date, user_id, device_id
),

-- A day without a valid event has no row (the contract): grouping yields none.
aggregated as (
    select
        event_date,
        cast(sum(events) as bigint) as events,
        count(distinct {{ actor_id() }}) as active_users,
        count(distinct user_id) as logged_in_users,
        count(distinct device_id) as active_devices
    from pairs
    group by event_date
),

{{ with_revisions(
    'aggregated',
    keys=[],
    measures=['active_users', 'logged_in_users', 'active_devices', 'events'],
) }},

final as (
    select * from revised
)

select * from final
