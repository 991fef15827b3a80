{%- set day_filter = "event_date = " ~ event_date_literal() -%}
{{ config(incremental_predicates=[day_filter]) }}

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
    period='event_date',
    period_end="timezone('UTC', cast(event_date as timestamp)) + interval 1 day",
    keys=['platform'],
    measures=['active_users'],
    partition_filter=day_filter,
) }},

final as (
    select * from revised
)

select * from final
