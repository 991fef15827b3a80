{#- No rows, with the columns and types of `columns` (a mapping of name to type): what a source
    with no file yet reads as, so that an empty lake or a first build is a normal state. -#}
{% macro empty_relation(columns) -%}
    select
    {%- for name, type in columns.items() %}
        cast(null as {{ type }}) as {{ name }}{{ "," if not loop.last }}
    {%- endfor %}
    where false
{%- endmacro %}
