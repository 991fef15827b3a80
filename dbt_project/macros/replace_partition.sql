{#- Incremental strategy `replace_partition`: delete the rows that match the model's
    incremental_predicates (the day being built), then insert the new rows. Unlike dbt's
    delete+insert it also clears rows whose key vanished from the rebuild. -#}
{% macro get_incremental_replace_partition_sql(arg_dict) -%}
    {%- set predicates = arg_dict['incremental_predicates'] -%}
    {%- if not predicates -%}
        {{ exceptions.raise_compiler_error(
            "replace_partition needs incremental_predicates that select the partition") }}
    {%- endif -%}
    {%- set columns = arg_dict['dest_columns'] | map(attribute='quoted') | join(', ') -%}
    delete from {{ arg_dict['target_relation'] }}
    where {{ predicates | join(' and ') }};

    insert into {{ arg_dict['target_relation'] }} ({{ columns }})
    select {{ columns }} from {{ arg_dict['temp_relation'] }}
{%- endmacro %}
