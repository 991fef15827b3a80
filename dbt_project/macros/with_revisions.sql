{#- The one finalization and revision rule, shared by every mart.

    Renders CTEs ending in `revised` (the rows to write); call it inside a `with` list.
    new_rows: a CTE with one row per period and key and the measures, rebuilt from silver.
    period: the column that is finalized and revised as a whole (event_date or event_hour).
    period_end: SQL over new_rows' columns for the end of the period, as a timestamptz.
    partition_filter: SQL that selects the stored rows of the days being rebuilt.
    The defaults are a daily mart's: the period is event_date, the partition a day.

    A period is final when every Kafka partition has landed through its end + allowed lateness
    (var landed_through, the landed watermark; never the wall clock). Compared with the stored rows of
    the same period: identical numbers keep the stored revision and computed_at (is_final may
    only turn true); different numbers after the stored rows were final are a restatement
    (revision + 1); different numbers while provisional keep the revision; a new period starts
    at revision 1. -#}
{% macro with_revisions(
    new_rows,
    keys,
    measures,
    period='event_date',
    period_end="timezone('UTC', cast(event_date as timestamp)) + interval 1 day",
    partition_filter=none
) -%}
    {%- set partition_filter = partition_filter or event_date_filter() -%}
    {%- set compared = ([period] + keys + measures) | join(', ') -%}
stored as (
    {%- if is_incremental() %}
    select {{ compared }}, revision, is_final, computed_at
    from {{ this }}
    where {{ partition_filter }}
    {%- else %}
    select {{ compared }}, 1 as revision, false as is_final,
        cast(null as timestamptz) as computed_at
    from {{ new_rows }}
    where false
    {%- endif %}
),

stored_periods as (
    select
        {{ period }},
        max(revision) as stored_revision,
        bool_and(is_final) as stored_is_final,
        max(computed_at) as stored_computed_at
    from stored
    group by {{ period }}
),

changed_periods as (
    select distinct {{ period }}
    from (
        (select {{ compared }} from {{ new_rows }} except select {{ compared }} from stored)
        union all
        (select {{ compared }} from stored except select {{ compared }} from {{ new_rows }})
    )
),

judged as (
    select
        n.*,
        s.{{ period }} is not null as was_stored,
        c.{{ period }} is not null as is_changed,
        s.stored_revision,
        s.stored_is_final,
        s.stored_computed_at,
        {{ landed_through_literal() }} >= n.period_end + {{ allowed_lateness() }} as is_final_now
    from (select *, {{ period_end }} as period_end from {{ new_rows }}) as n
    left join stored_periods as s on n.{{ period }} = s.{{ period }}
    left join changed_periods as c on n.{{ period }} = c.{{ period }}
),

revised as (
    select
        {{ compared }},
        case
            when not was_stored then 1
            when is_changed and stored_is_final then stored_revision + 1
            else stored_revision
        end as revision,
        case
            when was_stored and not is_changed then stored_is_final or is_final_now
            else is_final_now
        end as is_final,
        case
            when was_stored and not is_changed then stored_computed_at
            else {{ as_of_literal() }}
        end as computed_at
    from judged
)
{%- endmacro %}
