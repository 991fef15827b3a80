{{ config(meta={'partition_column': 'event_date'}) }}

with source as (
    select * from {{ ref('stg_events') }}
    where lake_date = {{ event_date_literal() }}
),

renamed as (
    select
        event_id,
        actor_id,
        user_id,
        device_id
    from source
),

-- A day always gets its row, even with no events, so that its finality is on record.
aggregated as (
    select
        {{ event_date_literal() }} as event_date,
        count(distinct actor_id) as active_users,
        count(distinct user_id) as logged_in_users,
        count(distinct device_id) as active_devices,
        count(event_id) as events
    from renamed
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
