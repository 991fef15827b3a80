{#- The head every mart shares: its incremental predicate (the rows of the day being built,
    which replace_partition deletes first) and the CTE `day_events`, the valid events of that
    day (lake_date reads only the day's silver files), optionally of one event type.
    Call it first, in place of `with`. -#}
{% macro mart_head(event_type=none, predicate=none) -%}
    {{ config(incremental_predicates=[predicate or event_date_filter()]) }}
with day_events as (
    select * from {{ ref('stg_events') }}
    where
        lake_date = {{ event_date_literal() }}
        {%- if event_type %}
            and event_type = '{{ event_type }}'
        {%- endif %}
)
{%- endmacro %}
