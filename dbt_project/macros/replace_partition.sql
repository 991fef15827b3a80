{#- Incremental strategy `replace_partition`: delete the rows of the days being built (var
    event_dates), or only of the hours it rebuilds when meta.partition_hours is set
    (rebuilt_hours_filter; meta.finalizes adds the provisional hours), then insert the new rows.
    Unlike dbt's delete+insert it also clears rows whose key vanished from the rebuild. A model names the column that holds its period in
    meta.partition_column (event_date, or event_hour for an hourly mart). The day is rendered
    here, when the model runs, never in the model's config (which dbt renders once, at parse
    time), so that one parsed manifest serves every day. -#}
{% macro get_incremental_replace_partition_sql(arg_dict) -%}
    {%- set meta = config.get('meta') or {} -%}
    {%- set column = meta.get('partition_column') -%}
    {%- if not column -%}
        {{ exceptions.raise_compiler_error(
            "replace_partition needs meta.partition_column: the column that holds the period") }}
    {%- endif -%}
    {%- set columns = arg_dict['dest_columns'] | map(attribute='quoted') | join(', ') -%}
    delete from {{ arg_dict['target_relation'] }}
    where
        {{ day_partition_filter(column) }}
        {%- if meta.get('partition_hours') %}
            and {{ rebuilt_hours_filter(column, finalizes=meta.get('finalizes', false)) }}
        {%- endif %};

    insert into {{ arg_dict['target_relation'] }} ({{ columns }})
    select {{ columns }} from {{ arg_dict['temp_relation'] }}
{%- endmacro %}

{% macro day_partition_filter(column) -%}
    {#- The rows of the run's days: a date column is one of them, a timestamp column falls in
        one (a range per day, which DuckDB prunes by). -#}
    {%- if column.endswith('_date') -%}
        {{ column }} in {{ event_dates_list() }}
    {%- else -%}
        ({%- for day in event_dates() -%}
            {%- set start = "timestamptz '" ~ day ~ " 00:00:00+00'" -%}
            ({{ column }} >= {{ start }} and {{ column }} < {{ start }} + interval 1 day)
            {{- ' or ' if not loop.last }}
        {%- endfor -%})
    {%- endif -%}
{%- endmacro %}
