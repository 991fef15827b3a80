{#- Who did an event: the signed-in user_id when present, else 'device:' followed by the
    device_id. "Active users" in every mart counts distinct actors. The one definition: the
    staging view adds it to silver, and mart_head to the hourly rollup, which keeps only the
    user and device it is made of (a third string column of nearly every event cost a quarter
    of the rollup's first build). -#}
{% macro actor_id() -%}
    coalesce(user_id, 'device:' || device_id)
{%- endmacro %}
