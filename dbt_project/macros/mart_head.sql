{#- The head every mart shares: its period column (replace_partition deletes the rows of the days
    being built by it; the var `marts` is the one list of marts and their periods) and the CTE
    `day_events`: the hourly rollup's rows of those days (int_hourly_activity, each with its
    `events` and its `actor_id`), optionally of one event type. Call it first, in place of
    `with`. -#}
{% macro mart_head(event_type=none) -%}
    {#- A unit test renders the model as itself: the model it tests is the one to look up. -#}
    {%- set mart = (model.get('tested_node_unique_id') or model.unique_id).split('.')[-1] -%}
    {%- set period = var('marts').get(mart) -%}
    {%- if not period -%}
        {{ exceptions.raise_compiler_error(
            mart ~ " is missing from the var marts (dbt_project.yml), with its period") }}
    {%- endif -%}
    {#- An hourly mart rebuilds only the hours whose rollup is rebuilt and its provisional ones. -#}
    {%- set hourly = period == 'event_hour' -%}
    {{ config(meta={'partition_column': period, 'partition_hours': hourly, 'finalizes': hourly}) }}
with day_events as (
    select *, {{ actor_id() }} as actor_id from {{ ref('int_hourly_activity') }}
    where
        {{ event_date_filter() }}
        {%- if event_type %}
            and event_type = '{{ event_type }}'
        {%- endif %}
        {%- if hourly %}
            and {{ rebuilt_hours_filter(period, finalizes=true) }}
        {%- endif %}
)
{%- endmacro %}
