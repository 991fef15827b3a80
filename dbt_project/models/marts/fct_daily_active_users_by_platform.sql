{{ config(meta={'partition_column': 'event_date'}) }}

with source as (
    select * from {{ ref('stg_events') }}
    where lake_date = {{ event_date_literal() }}
),

renamed as (
    select
        event_date,
        platform,
        actor_id
    from source
),

aggregated as (
    select
        event_date,
        platform,
        count(distinct actor_id) as active_users
    from renamed
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
