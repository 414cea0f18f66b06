"""Checks of a README's YAML metadata (`POST /api/validate-yaml`), so that a card the Hub would refuse is refused
here too, before it is pushed: the client's `RepoCard.validate` and `push_to_hub` ask first."""

from __future__ import annotations

import yaml

from keephub.wire import BadRequest

# Fields that hold one name or a list of names.
_NAME_OR_NAMES = ("license", "language", "datasets", "metrics", "base_model", "tags")
_NAME_ONLY = ("pipeline_tag", "library_name", "license_name", "license_link")


def front_matter(content: str) -> str | None:
    """The YAML between a leading `---` line and the next `---` line; None when the README has none (a lone
    `---` is a Markdown rule, as the client reads it too)."""
    lines = content.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for index, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            return "\n".join(lines[1:index])
    return None


def check_metadata(content: str) -> None:
    """Refuse, naming every problem, metadata the Hub would not accept; a README without metadata passes."""
    block = front_matter(content)
    if block is None:
        return
    try:
        metadata = yaml.safe_load(block)
    except yaml.YAMLError as exc:
        raise _invalid(f"the README's metadata is not valid YAML: {' '.join(str(exc).split())}")
    except RecursionError:
        raise _invalid("the README's metadata is nested too deeply to read; flatten it")
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise _invalid("the README's metadata must be a YAML mapping (key: value lines), not a "
                       f"{type(metadata).__name__}")
    problems = [problem for key, value in metadata.items() for problem in _field_problems(str(key), value)]
    if problems:
        raise _invalid("invalid metadata in the README: " + "; ".join(problems), problems)


def _invalid(message: str, problems: list[str] | None = None) -> BadRequest:
    """A 400 whose `errors` list the client prints when a commit of README.md is refused (`_validate_yaml`)."""
    return BadRequest(message, extra_body={"errors": [{"message": p} for p in problems or [message]], "warnings": []})


def _is_name(value: object) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _field_problems(key: str, value: object) -> list[str]:
    names = _is_name(value) or (isinstance(value, list) and all(_is_name(item) for item in value))
    if key in _NAME_OR_NAMES and value is not None and not names:
        return [f"'{key}' must be a string or a list of strings"]
    if key in _NAME_ONLY and value is not None and not _is_name(value):
        return [f"'{key}' must be a string"]
    if key == "model-index":
        return _model_index_problems(value)
    return []


def _model_index_problems(value: object) -> list[str]:
    """`model-index`: models, each with a name and results of a task on a dataset, with metric values."""
    if not isinstance(value, list):
        return ["'model-index' must be a list of models, each with 'name' and 'results'"]
    problems = []
    for number, model in enumerate(value):
        where = f"model-index[{number}]"
        if not isinstance(model, dict) or not _is_name(model.get("name")):
            problems.append(f"{where} needs a 'name'")
            continue
        results = model.get("results", [])
        if not isinstance(results, list):
            problems.append(f"{where}.results must be a list")
            continue
        for index, result in enumerate(results):
            at = f"{where}.results[{index}]"
            if not isinstance(result, dict):
                problems.append(f"{at} must be a mapping with 'task', 'dataset' and 'metrics'")
                continue
            task, dataset, metrics = result.get("task"), result.get("dataset"), result.get("metrics")
            if not isinstance(task, dict) or not _is_name(task.get("type")):
                problems.append(f"{at}.task needs a 'type' (e.g. text-generation)")
            if not isinstance(dataset, dict) or not _is_name(dataset.get("type")) or not _is_name(dataset.get("name")):
                problems.append(f"{at}.dataset needs a 'type' (its repo id) and a 'name'")
            if not isinstance(metrics, list) or not all(isinstance(m, dict) and _is_name(m.get("type"))
                                                        and "value" in m for m in metrics):
                problems.append(f"{at}.metrics must be a list of mappings with 'type' and 'value'")
    return problems
