{{ config(meta={'partition_column': 'event_date'}) }}

with source as (
    select * from {{ ref('stg_events') }}
    where lake_date = {{ event_date_literal() }}
),

renamed as (
    select
        event_date,
        title_id,
        actor_id,
        event_id
    from source
    where event_type = 'play'
),

aggregated as (
    select
        event_date,
        title_id,
        count(event_id) as plays,
        count(distinct actor_id) as unique_viewers
    from renamed
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
