{#- A data test of a build checks the run's days: on a model that names its day column
    (meta.partition_column of a mart, meta.day_column of a staging view) a test reads only the
    run's days, so a build costs its days, not the whole lake. dbt renders a test's `where` config
    once, at parse time; this macro (dbt's own hook for it) runs when the test does. -#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where') -%}
    {#- At parse time the graph is empty: the filter is only rendered when the test runs. -#}
    {%- set tested = (graph.get('nodes') or {}).get(model.get('attached_node')) or {} -%}
    {%- set meta = (tested.get('config') or {}).get('meta') or {} -%}
    {%- set column = meta.get('day_column') or meta.get('partition_column') -%}
    {%- set filters = [] -%}
    {%- if where -%}{%- do filters.append('(' ~ where ~ ')') -%}{%- endif -%}
    {%- if column -%}{%- do filters.append(day_partition_filter(column)) -%}{%- endif -%}
    {%- if filters -%}
        (select * from {{ relation }} where {{ filters | join(' and ') }}) as dbt_subquery
    {%- else -%}
        {{ relation }}
    {%- endif -%}
{%- endmacro %}
