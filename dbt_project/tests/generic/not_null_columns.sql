{#- Fails with one row per listed column that holds nulls, naming it and counting its null rows:
    a model's required columns checked in one pass and one test, not one test per column (each
    test is a query and a Dagster check result in every day's build). -#}
{% test not_null_columns(model, columns) %}
with counted as (
    select
        {%- for column in columns %}
            count(*) filter (where {{ column }} is null) as {{ column }}
            {{- "," if not loop.last }}
        {%- endfor %}
    from {{ model }}
)

select
    column_name,
    null_rows
from counted
unpivot (null_rows for column_name in ({{ columns | join(', ') }}))
where null_rows > 0
{% endtest %}
