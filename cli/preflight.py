"""Start-up checks that need code, in one place: the rules files are readable, every tool imports, the toolkit names
are usable, the model resolves, and the chat channel's settings are safe. Every command that builds an agent
(`process run|join|use|spec|deploy`, and `join --spec` for a spec file) runs them before connecting to anything, so
a mistake is one usage error naming what to fix, never a worker that fails later."""

from __future__ import annotations

import os
from typing import Any

from threadline.cli.errors import CliError, usage_error
from threadline.models.spec import AgentSpec


def preflight(spec: AgentSpec, *, from_spec_file: bool = False) -> None:
    from threadline.activities.model_provider import ModelConfigError, resolve_model
    from threadline.activities.pricing import PricesError, load_prices
    from threadline.activities.rules import SkillError, load_skills
    from threadline.activities.shell import ShellConfigError, check_shell
    from threadline.activities.tools import ToolLoadError, build_toolbox
    from threadline.channels.chat_http.settings import HttpConfigError, check_settings
    from threadline.worker import RulesFileError, load_rules

    def refuse(e: Exception, hint: str = "") -> CliError:
        if from_spec_file:
            return usage_error(f"the spec's agent cannot run: {e}")
        return usage_error(f"{e}; {hint}" if hint else str(e))

    extra_tools = toolkit_tools(spec)
    try:
        load_rules(spec)
    except RulesFileError as e:
        raise refuse(e, "check the --rules-file path") from e
    try:
        build_toolbox(storage=None, tool_references=spec.tools, extra_tools=extra_tools)
    except ToolLoadError as e:
        raise refuse(e) from e
    for model in {spec.model, spec.context.compaction_model or spec.model}:
        try:
            resolve_model(model, spec.model_base_url, dict(os.environ))
        except ModelConfigError as e:
            raise refuse(e) from e
    if (problem := model_settings_problem(spec)) is not None:
        raise refuse(ValueError(problem))
    try:
        check_shell(spec.shell)
    except ShellConfigError as e:
        raise refuse(e) from e
    try:
        load_skills(spec.skill_dirs)
    except (SkillError, OSError) as e:
        raise refuse(e) from e
    if problem := storage_rules_problem(spec):
        raise refuse(ValueError(problem))
    try:
        load_prices(spec.model_prices)
    except PricesError as e:
        raise refuse(e) from e
    if "chat" in spec.channels:
        try:
            check_settings(spec.http)
        except HttpConfigError as e:
            raise refuse(e) from e


def storage_rules_problem(spec: AgentSpec) -> str | None:
    """An --instructions or --room-rules file that is not in room storage (yet)."""
    if not (spec.instructions_files or spec.room_rules_files):
        return None
    from threadline.activities.storage import RoomStorage, StoragePathError

    storage = RoomStorage.for_spec(spec)
    for path in [*spec.instructions_files, *spec.room_rules_files]:
        try:
            storage.read_text(path)
        except (OSError, StoragePathError) as e:
            return (f"the rules file {path} is not readable in room storage {storage.url} ({e}): write it there "
                    "first (the storage_write tool, or the storage folder), or fix the path")
    return None


def model_settings_problem(spec: AgentSpec) -> str | None:
    """--reasoning-effort for a model that cannot take it, or a compaction threshold the window cannot hold."""
    from threadline.activities.context_window import check_context_settings, takes_reasoning_effort

    if spec.reasoning_effort and takes_reasoning_effort(spec.model) is False:
        return (f"--reasoning-effort {spec.reasoning_effort}: model {spec.model} does not take a reasoning effort "
                "(o-series and gpt-5 models do); leave the option out")
    return check_context_settings(spec.model, spec.context, spec.max_output_tokens)


def toolkit_tools(spec: AgentSpec) -> list[Any]:
    """`toolkit:NAME` channels and `--use-toolkit` values, checked: names usable as toolkit names."""
    from threadline.channels.toolkit.calls import toolkit_tools as tools_of
    from threadline.models.limits import validate_name

    for channel in spec.channels:
        if channel.startswith("toolkit:"):
            try:
                validate_name("toolkit name", channel.partition(":")[2])
            except ValueError as e:
                raise usage_error(f"channel {channel!r}: {e}") from e
    try:
        return tools_of(spec)
    except ValueError as e:
        raise usage_error(str(e) if "--use-toolkit" in str(e) else f"--use-toolkit: {e}") from e
