{{ mart_head(event_type='play') }},

aggregated as (
    select
        event_date,
        title_id,
        cast(sum(events) as bigint) as plays,
        count(distinct actor_id) as unique_viewers
    from day_events
    group by event_date, title_id
),

{{ with_revisions(
    'aggregated',
    keys=['title_id'],
    measures=['plays', 'unique_viewers'],
) }},

final as (
    select * from revised
)

select * from final
