{#- The run's inputs (dbt vars set by the Dagster asset), validated and rendered as SQL literals
    so that a malformed value fails the run instead of reaching the SQL. -#}

{% macro event_date_literal() -%}
    {%- set value = var('event_date') | string -%}
    {%- if not modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2}', value) -%}
        {{ exceptions.raise_compiler_error("var event_date must be YYYY-MM-DD, got " ~ value) }}
    {%- endif -%}
    date '{{ value }}'
{%- endmacro %}

{% macro event_date_filter() -%}
    {#- The rows of the day being built, in a daily mart: its incremental predicate. -#}
    event_date = {{ event_date_literal() }}
{%- endmacro %}

{% macro day_start_literal() -%}
    cast({{ event_date_literal() }} as timestamp) at time zone 'UTC'
{%- endmacro %}

{% macro as_of_literal() -%}
    {%- set value = var('as_of') | string -%}
    {%- if not modules.re.fullmatch('[0-9T:.+ Z-]+', value) -%}
        {{ exceptions.raise_compiler_error("var as_of must be an ISO timestamp, got " ~ value) }}
    {%- endif -%}
    cast('{{ value }}' as timestamptz)
{%- endmacro %}

{% macro landed_through_literal() -%}
    {#- The landed watermark: every Kafka partition has landed through this instant. -#}
    {%- set value = var('landed_through') | string -%}
    {%- if not modules.re.fullmatch('[0-9T:.+ Z-]+', value) -%}
        {{ exceptions.raise_compiler_error(
            "var landed_through must be an ISO timestamp, got " ~ value) }}
    {%- endif -%}
    cast('{{ value }}' as timestamptz)
{%- endmacro %}

{% macro allowed_lateness() -%}
    {%- set value = var('allowed_lateness_minutes') | string -%}
    {%- if not modules.re.fullmatch('[0-9]+', value) -%}
        {{ exceptions.raise_compiler_error(
            "var allowed_lateness_minutes must be a whole number, got " ~ value) }}
    {%- endif -%}
    to_minutes(cast({{ value }} as bigint))
{%- endmacro %}

{% macro lake_path(suffix) -%}
    {%- set root = var('lake_url') | string -%}
    {%- if "'" in root -%}
        {{ exceptions.raise_compiler_error("var lake_url must not contain a quote") }}
    {%- endif -%}
    {{ root.rstrip('/') }}/{{ suffix }}
{%- endmacro %}

{% macro lake_source(source_name, table_name) -%}
    {#- A lake source, its location resolved when the model runs: the sources name the lake
        `$lake_url` rather than var('lake_url'), which dbt would render into the parsed manifest,
        so one parse serves every lake. -#}
    {{ return(source(source_name, table_name) | string | replace('$lake_url/', lake_path(''))) }}
{%- endmacro %}

{% macro lake_has_files(pattern) -%}
    {#- read_parquet fails on a glob that matches nothing; an empty lake is a normal state. -#}
    {%- if not execute -%}
        {{ return(true) }}
    {%- endif -%}
    {%- set found = run_query("select count(*) from glob('" ~ pattern ~ "')") -%}
    {{ return(found.columns[0].values()[0] > 0) }}
{%- endmacro %}

{% macro rollup_hours() -%}
    {#- The hours of the day whose hourly rollup this run rebuilds (var rollup_hours: hour 0-23 ->
        the digest of what its silver holds, or none when unknown), validated. -#}
    {%- set hours = var('rollup_hours') -%}
    {%- if hours is not mapping -%}
        {{ exceptions.raise_compiler_error(
            "var rollup_hours must map hours to digests, got " ~ hours) }}
    {%- endif -%}
    {%- for hour, digest in hours.items() -%}
        {%- if not modules.re.fullmatch('[0-9]|1[0-9]|2[0-3]', hour | string) -%}
            {{ exceptions.raise_compiler_error(
                "var rollup_hours must map hours from 0 to 23, got " ~ hour) }}
        {%- endif -%}
        {%- if digest is not none and not modules.re.fullmatch('[0-9a-f]+', digest | string) -%}
            {{ exceptions.raise_compiler_error(
                "var rollup_hours must map hours to hex digests, got " ~ digest) }}
        {%- endif -%}
    {%- endfor -%}
    {{ return(hours) }}
{%- endmacro %}

{% macro rollup_hours_filter(hour_column) -%}
    {#- The rows of the hours this run rebuilds. -#}
    {%- set hours = rollup_hours() -%}
    {%- if hours | length == 0 -%}
        false
    {%- else -%}
        {{ hour_column }} in ({{ hours.keys() | join(', ') }})
    {%- endif -%}
{%- endmacro %}

{% macro rebuilt_hours_filter(column, finalizes=false) -%}
    {#- The rows of an hourly table (timestamp `column`) that this run rebuilds: the hours whose
        rollup is rebuilt, and in a table that finalizes hours (`finalizes`) also the hours it
        holds as provisional, whose finality may turn. A first build (not incremental) builds
        every hour. -#}
    {%- if not is_incremental() -%}
        true
    {%- else -%}
    ({{ rollup_hours_filter("hour(timezone('UTC', " ~ column ~ "))") }}
    {%- if finalizes %}
        or {{ column }} in (
            select provisional.{{ column }} from {{ this }} as provisional
            where
                {{ day_partition_filter('provisional.' ~ column) }}
                and not provisional.is_final
        )
    {%- endif %})
    {%- endif -%}
{%- endmacro %}

{% macro rollup_built_from(hour_column) -%}
    {#- The digest of what each rebuilt hour's silver holds: stored with the hour's rows, so that
        the next run knows what they were built from (an hour not listed reads null). -#}
    {%- set hours = rollup_hours() -%}
    {%- if hours | length == 0 -%}
        cast(null as varchar)
    {%- else -%}
        cast(case {{ hour_column }}
        {%- for hour, digest in hours.items() %}
            when {{ hour }} then {{ "'" ~ digest ~ "'" if digest is not none else 'null' }}
        {%- endfor %}
        end as varchar)
    {%- endif -%}
{%- endmacro %}
