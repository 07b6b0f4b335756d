"""The agent's rules as the model gets them at each call, in `meshagent process`'s order: `--rule` and
`--rules-file` lines (read at start), the skills list, then `--instructions` and `--room-rules` files, which live in
room storage and are read at every model call, so editing one changes the agent from its next call on, without a
restart."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from threadline.activities.storage import RoomStorage, StoragePathError
from threadline.activities.tools import Tool
from threadline.models.spec import AgentSpec

log = logging.getLogger("threadline.rules")

PREAMBLE_RULE = "Before you call a tool, say in one short sentence what you are about to do and why."


class SkillError(ValueError):
    """A `--skill-dir` that cannot be read as skills."""


@dataclasses.dataclass(frozen=True)
class Skill:
    name: str
    description: str
    path: Path

    def body(self) -> str:
        return _front_matter(self.path.read_text())[1]


def _front_matter(text: str) -> tuple[dict[str, str], str]:
    if not text.startswith("---"):
        return {}, text
    head, sep, body = text[3:].partition("\n---")
    if not sep:
        return {}, text
    fields = {}
    for line in head.strip().splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields[key.strip().lower()] = value.strip().strip("'\"")
    return fields, body.lstrip("\n")


def load_skills(dirs: list[str]) -> list[Skill]:
    """Each folder under a `--skill-dir` with a SKILL.md (front matter `name:` and `description:`) is a skill."""
    skills: dict[str, Skill] = {}
    for value in dirs:
        root = Path(value).expanduser()
        if not root.is_dir():
            raise SkillError(f"--skill-dir {value}: not a folder")
        for skill_file in sorted(root.glob("*/SKILL.md")):
            fields, _ = _front_matter(skill_file.read_text())
            name = fields.get("name") or skill_file.parent.name
            if not fields.get("description"):
                raise SkillError(f"{skill_file}: its front matter needs a description: (what the skill is for)")
            if name in skills:
                raise SkillError(f"two skills are named {name!r}: {skills[name].path} and {skill_file}")
            skills[name] = Skill(name, fields["description"], skill_file)
    return list(skills.values())


def skill_tools(skills: list[Skill]) -> list[Tool]:
    if not skills:
        return []
    by_name = {s.name: s for s in skills}

    def read_skill(name: str) -> str:
        skill = by_name.get(name)
        if skill is None:
            return f"error: there is no skill named {name!r}; skills: {', '.join(by_name)}"
        return skill.body()

    return [Tool("read_skill", "Read a skill's instructions (its SKILL.md) by name.", read_skill, 10.0)]


def rule_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class AgentRules:
    def __init__(self, spec: AgentSpec, base: list[str], storage: RoomStorage, skills: list[Skill]) -> None:
        self.spec, self.base, self.storage, self.skills = spec, base, storage, skills

    def current(self) -> list[str]:
        """Blocking (room storage may be S3): callers run it in a thread."""
        rules = list(self.base)
        if self.spec.preamble_rule and not rules:
            rules.append(PREAMBLE_RULE)
        if self.skills:
            rules.append("Skills you can use (read one with read_skill before you follow it): " + "; ".join(
                f"{s.name}: {s.description}" for s in self.skills))
        for path in [*self.spec.instructions_files, *self.spec.room_rules_files]:
            try:
                rules += rule_lines(self.storage.read_text(path))
            except (OSError, StoragePathError) as e:
                log.warning("rules file %s in room storage cannot be read now (%s): its rules are left out", path, e)
        return rules
