{#- The head every mart shares: its incremental predicate (the rows of the day being built, which
    replace_partition deletes first, by the mart's period column from the var `marts`, the one
    list of marts) and the CTE `day_events`, the valid events of that day (lake_date reads only
    the day's silver files), optionally of one event type. Call it first, in place of `with`. -#}
{% macro mart_head(event_type=none) -%}
    {#- A unit test renders the model as itself: the model it tests is the one to look up. -#}
    {%- set mart = (model.get('tested_node_unique_id') or model.unique_id).split('.')[-1] -%}
    {%- set period = var('marts').get(mart) -%}
    {%- if not period -%}
        {{ exceptions.raise_compiler_error(
            mart ~ " is missing from the var marts (dbt_project.yml), with its period") }}
    {%- endif -%}
    {{ config(incremental_predicates=[day_partition_filter(period)]) }}
with day_events as (
    select * from {{ ref('stg_events') }}
    where
        lake_date = {{ event_date_literal() }}
        {%- if event_type %}
            and event_type = '{{ event_type }}'
        {%- endif %}
)
{%- endmacro %}

{% macro day_partition_filter(column) -%}
    {#- The rows of the run's day: a date column equals it, a timestamp column falls in it. -#}
    {%- if column == 'event_date' -%}
        {{ event_date_filter() }}
    {%- else -%}
        {{ column }} >= {{ day_start_literal() }}
        and {{ column }} < {{ day_start_literal() }} + interval 1 day
    {%- endif -%}
{%- endmacro %}
