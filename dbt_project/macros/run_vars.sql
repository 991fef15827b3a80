{#- The run's inputs (dbt vars set by the Dagster asset), validated and rendered as SQL literals
    so that a malformed value fails the run instead of reaching the SQL. -#}

{% macro event_dates() -%}
    {#- The days this run builds (var event_dates: a list of YYYY-MM-DD), validated. -#}
    {%- set days = var('event_dates') -%}
    {%- if days is string or days is mapping or days is not iterable or days | length == 0 -%}
        {{ exceptions.raise_compiler_error(
            "var event_dates must be a non-empty list of YYYY-MM-DD days, got " ~ days) }}
    {%- endif -%}
    {%- for day in days -%}{%- do check_day(day, 'event_dates') -%}{%- endfor -%}
    {{ return(days | map('string') | list) }}
{%- endmacro %}

{% macro check_day(day, var_name) -%}
    {%- if not modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2}', day | string) -%}
        {{ exceptions.raise_compiler_error(
            "var " ~ var_name ~ " must name days as YYYY-MM-DD, got " ~ day) }}
    {%- endif -%}
{%- endmacro %}

{% macro event_dates_list() -%}
    ({%- for day in event_dates() -%}
        date '{{ day }}'{{ ', ' if not loop.last }}
    {%- endfor -%})
{%- endmacro %}

{% macro event_date_filter() -%}
    {#- The rows of the days being built, in a daily mart: its incremental predicate. -#}
    event_date in {{ event_dates_list() }}
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
    {#- The hours whose hourly rollup this run rebuilds (var rollup_hours: day YYYY-MM-DD -> hour
        0-23 -> the digest of what its silver holds, or none when unknown), validated. -#}
    {%- set days = var('rollup_hours') -%}
    {%- if days is not mapping -%}
        {{ exceptions.raise_compiler_error(
            "var rollup_hours must map days to hours, got " ~ days) }}
    {%- endif -%}
    {%- for day, hours in days.items() -%}
        {%- do check_day(day, 'rollup_hours') -%}
        {%- if hours is not mapping -%}
            {{ exceptions.raise_compiler_error(
                "var rollup_hours must map each day's hours to digests, got " ~ hours) }}
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
    {%- endfor -%}
    {{ return(days) }}
{%- endmacro %}

{% macro rollup_hours_filter(date_column, hour_column) -%}
    {#- The rows of the hours this run rebuilds (a UTC date and hour of day). -#}
    {%- set days = rollup_hours() -%}
    {%- set wanted = [] -%}
    {%- for day, hours in days.items() if hours | length > 0 -%}
        {%- do wanted.append("(" ~ date_column ~ " = date '" ~ day ~ "' and " ~ hour_column
            ~ " in (" ~ (hours.keys() | join(', ')) ~ "))") -%}
    {%- endfor -%}
    {%- if wanted | length == 0 -%}
        false
    {%- else -%}
        ({{ wanted | join(' or ') }})
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
    ({{ rollup_hours_filter("cast(timezone('UTC', " ~ column ~ ") as date)",
                            "hour(timezone('UTC', " ~ column ~ "))") }}
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

{% macro rollup_built_from(date_column, hour_column) -%}
    {#- The digest of what each rebuilt hour's silver holds: stored with the hour's rows, so that
        the next run knows what they were built from (an hour not listed reads null). -#}
    {%- set days = rollup_hours() -%}
    {%- set whens = [] -%}
    {%- for day, hours in days.items() -%}
        {%- for hour, digest in hours.items() -%}
            {%- do whens.append("when " ~ date_column ~ " = date '" ~ day ~ "' and " ~ hour_column
                ~ " = " ~ hour ~ " then " ~ ("'" ~ digest ~ "'" if digest is not none else 'null')) -%}
        {%- endfor -%}
    {%- endfor -%}
    {%- if whens | length == 0 -%}
        cast(null as varchar)
    {%- else -%}
        cast(case
        {%- for when in whens %}
            {{ when }}
        {%- endfor %}
        end as varchar)
    {%- endif -%}
{%- endmacro %}
