{{ mart_head(event_type='ad_impression') }},

aggregated as (
    select
        event_date,
        campaign_id,
        cast(sum(events) as bigint) as impressions,
        count(distinct actor_id) as unique_viewers
    from day_events
    group by event_date, campaign_id
),

{{ with_revisions(
    'aggregated',
    keys=['campaign_id'],
    measures=['impressions', 'unique_viewers'],
) }},

final as (
    select * from revised
)

select * from final
