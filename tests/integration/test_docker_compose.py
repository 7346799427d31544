"""docker/compose.yaml and docker/Dockerfile, checked without a Docker engine.

No engine runs here, so nothing is built or started. What can be checked is:

* the compose file, by the Compose implementation itself: ``docker compose config``
  (v2 plugin) or else ``docker-compose config`` (v1.29, Debian's package, which
  validates offline). ``scripts/ensure-compose`` installs one; without any, the
  test fails in CI and is skipped elsewhere;
* the Dockerfile, statically: every COPY source exists and survives .dockerignore,
  the src/rolebus symlinks point inside what is copied, the ENTRYPOINT is the
  console script pyproject declares, the final stage runs as non-root.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENSURE_COMPOSE = ROOT / "scripts" / "ensure-compose"
EXPECTED_SERVICES = {"kafka", "postgres", "topics", "worker"}
NO_COMPOSE = (
    "no Compose implementation: neither `docker compose` (v2) nor `docker-compose` (v1) "
    "is installed; run scripts/ensure-compose (as root it installs Debian's docker-compose)"
)


# --------------------------------------------------------------------------- compose


@dataclass(frozen=True)
class Compose:
    argv: tuple[str, ...]
    major: int

    def run(self, *args: str, file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
        # Global options (-f, --profile) go before the subcommand in v1 and v2 alike.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("COMPOSE_") and k != "ROLEBUS_IMAGE"
        }
        return subprocess.run(
            [*self.argv, "-f", str(file), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=file.parent,
            check=False,
        )

    def config(self, *global_opts: str, file: Path = COMPOSE_FILE) -> dict[str, Any]:
        """The resolved model (interpolated, merged, defaults applied)."""
        if self.major >= 2:
            proc = self.run(*global_opts, "config", "--format", "json", file=file)
            assert proc.returncode == 0, proc.stderr
            loaded: dict[str, Any] = json.loads(proc.stdout)
            return loaded
        proc = self.run(*global_opts, "config", file=file)
        assert proc.returncode == 0, proc.stderr
        parsed = parse_block_yaml(proc.stdout)
        assert isinstance(parsed, dict), proc.stdout
        return parsed


def _version(argv: list[str]) -> int | None:
    try:
        proc = subprocess.run(
            [*argv, "version", "--short"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"v?(\d+)\.", proc.stdout.strip())
    return int(match.group(1)) if proc.returncode == 0 and match else None


@functools.cache  # the fixture and test_ensure_compose_script share one lookup
def find_compose() -> Compose | None:
    """`docker compose` (v2 plugin) first, then a `docker-compose` binary (v1 or v2)."""
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for argv in candidates:
        major = _version(argv)
        if major is not None:
            return Compose(tuple(argv), major)
    return None


@pytest.fixture(scope="module")
def compose() -> Compose:
    found = find_compose()
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(NO_COMPOSE)
        pytest.skip(NO_COMPOSE)
    return found


def parse_block_yaml(text: str) -> Any:
    """Just enough YAML to read ``docker-compose config`` (v1) output: block
    mappings and sequences, plain and quoted scalars, folded plain scalars, and
    the empty ``{}``/``[]``. Scalars stay strings. (The venv has no PyYAML.)"""
    lines: list[tuple[int, str]] = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#") or stripped == "---":
            continue
        lines.append((len(raw) - len(raw.lstrip(" ")), stripped))
    value, end = _node(lines, 0, lines[0][0] if lines else 0)
    if end != len(lines):
        raise ValueError(f"unparsed YAML from line {end}: {lines[end][1]!r}")
    return value


_KEY = re.compile(r"""^("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^'"\s][^:]*?):(?:\s+(.*))?$""")


def _node(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[Any, int]:
    if i >= len(lines):
        return None, i
    if lines[i][1].startswith("- ") or lines[i][1] == "-":
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _sequence(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("-"):
        rest = lines[i][1][1:].lstrip()
        if _KEY.match(rest) or rest.endswith(":"):
            # "- key: value" opens a mapping whose keys sit two columns in.
            sub = [(indent + 2, rest), *lines[i + 1 :]]
            value, used = _mapping(sub, 0, indent + 2)
            items.append(value)
            i += used
            continue
        text, i = _continued(lines, i + 1, indent, rest)
        items.append(_scalar(text))
    return items, i


def _mapping(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[dict[str, Any], int]:
    result: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
        match = _KEY.match(lines[i][1])
        if match is None:
            raise ValueError(f"not a 'key: value' line: {lines[i][1]!r}")
        key, rest = _scalar(match.group(1)), match.group(2)
        i += 1
        if rest:
            text, i = _continued(lines, i, indent, rest)
            result[key] = _scalar(text)
        elif i < len(lines) and lines[i][0] > indent:
            result[key], i = _node(lines, i, lines[i][0])
        elif i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            result[key], i = _sequence(lines, i, indent)  # PyYAML's unindented lists
        else:
            result[key] = None
    return result, i


def _continued(lines: list[tuple[int, str]], i: int, indent: int, text: str) -> tuple[str, int]:
    """A plain scalar folded onto more-indented lines."""
    while i < len(lines) and lines[i][0] > indent:
        text += " " + lines[i][1]
        i += 1
    return text, i


def _scalar(text: str) -> Any:
    if text == "{}":
        return {}
    if text == "[]":
        return []
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        decoded: str = json.loads(text)
        return decoded
    return text


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_parse_block_yaml_reads_compose_v1_output() -> None:
    text = (
        "services:\n"
        "  kafka:\n"
        "    healthcheck:\n"
        "      test:\n"
        "      - CMD-SHELL\n"
        "      - /opt/kafka/bin/tool --bootstrap-server kafka:9092\n"
        "        > /dev/null 2>&1\n"
        "    environment:\n"
        "      A: '1'\n"
        '      B: "x: y"\n'
        "    ports:\n"
        "    - 127.0.0.1:29092:29092/tcp\n"
        "    - target: 1\n"
        "      published: '2'\n"
        "version: '3.9'\n"
        "volumes:\n"
        "  data: {}\n"
    )
    assert parse_block_yaml(text) == {
        "services": {
            "kafka": {
                "healthcheck": {
                    "test": [
                        "CMD-SHELL",
                        "/opt/kafka/bin/tool --bootstrap-server kafka:9092 > /dev/null 2>&1",
                    ]
                },
                "environment": {"A": "1", "B": "x: y"},
                "ports": ["127.0.0.1:29092:29092/tcp", {"target": "1", "published": "2"}],
            }
        },
        "version": "3.9",
        "volumes": {"data": {}},
    }


def test_compose_file_is_valid(compose: Compose) -> None:
    proc = compose.run("config", "-q")
    assert proc.returncode == 0, f"{' '.join(compose.argv)} config failed:\n{proc.stderr}"


def test_compose_services_and_environment(compose: Compose) -> None:
    model = compose.config()
    services = model["services"]
    assert set(services) >= EXPECTED_SERVICES

    for name in ("topics", "worker"):
        env = _env(services[name])
        assert env.get("ROLEBUS_KAFKA_BOOTSTRAP") == "kafka:9092", (name, env)
        assert env.get("ROLEBUS_PG_DSN", "").startswith("postgresql://"), (name, env)

    # The rolebus services are built from this repository with docker/Dockerfile.
    build = services["worker"]["build"]
    context = Path(build["context"])
    assert context.resolve() == ROOT, build
    assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE

    # Start order: topics after a healthy broker, workers after topics succeeded.
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert (
        services["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    )
    kafka_env = _env(services["kafka"])
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "kafka:9092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert "127.0.0.1:29092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]


def test_projector_is_under_its_profile(compose: Compose) -> None:
    model = compose.config("--profile", "projectors")
    projector = model["services"]["projector"]
    assert list(projector["profiles"]) == ["projectors"]
    assert _env(projector)["ROLEBUS_KAFKA_BOOTSTRAP"] == "kafka:9092"


def _binds(service: dict[str, Any]) -> dict[str, Path]:
    """Bind mounts of a service: container target -> host source (v1 strings, v2 dicts)."""
    found = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                found[str(volume["target"])] = Path(str(volume["source"]))
        elif str(volume).startswith("/"):
            source, target = str(volume).split(":")[:2]
            found[target] = Path(source)
    return found


def test_dashboard_and_monitoring_services(compose: Compose, run_cli: Any) -> None:
    model = compose.config("--profile", "projectors", "--profile", "monitoring")
    services = model["services"]
    assert [str(w) for w in services["projector"]["command"]] == ["project"]
    assert run_cli("project", "--help").returncode == 0
    dashboard = services["dashboard"]
    command = [str(w) for w in dashboard["command"]]
    assert command[0] == "dashboard" and command[command.index("--host") + 1] == "0.0.0.0"
    port = command[command.index("--port") + 1]
    assert run_cli(*command[:1], "--help").returncode == 0
    assert _env(dashboard)["ROLEBUS_PG_DSN"].startswith("postgresql://")
    assert dashboard["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert list(dashboard["profiles"]) == ["projectors"]
    for name in ("prometheus", "grafana"):
        assert list(services[name]["profiles"]) == ["monitoring"]
        for target, source in _binds(services[name]).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) is not in the repo"

    prometheus = _binds(services["prometheus"])["/etc/prometheus/prometheus.yml"]
    (job,) = parse_block_yaml(prometheus.read_text())["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["metric_name_escaping_scheme"] == "underscores"
    assert job["static_configs"][0]["targets"] == [f"dashboard:{port}"]

    grafana = _binds(services["grafana"])
    datasource = parse_block_yaml(
        (grafana["/etc/grafana/provisioning"] / "datasources" / "prometheus.yaml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    provider = parse_block_yaml(
        (grafana["/etc/grafana/provisioning"] / "dashboards" / "rolebus.yaml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] in grafana
    board = json.loads((grafana[provider["options"]["path"]] / "rolebus.json").read_text())
    uids = {p["datasource"]["uid"] for p in board["panels"]}
    assert uids == {datasource["uid"]}


def test_grafana_queries_only_metrics_that_metrics_exposes() -> None:
    """Every metric a Grafana panel queries is one /metrics serves (default escaping)."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import CollectorRegistry

    from rolebus.projectors.dashboard_sql import RoleTotals, TenantNow
    from rolebus.projectors.metrics import StoreCollector

    counts = {"events": 1, "msg_assistant": 1, "lag_count": 1}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        StoreCollector(
            [RoleTotals("t", "r", "m", counts, [1], {"x": 1})],
            [TenantNow("t", 5, {"active": 1})],
        )
    )
    text = generate_latest(registry).decode()
    served = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    board = json.loads((ROOT / "docker" / "grafana" / "dashboards" / "rolebus.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    queried = {
        name
        for expr in exprs
        for name in re.findall(r"\b((?:rolebus|gen_ai)_[a-z_]+)\s*[{\[]", expr)
    }
    assert len(queried) >= 8, queried
    assert queried <= served, sorted(queried - served)


def _mutated_copy(tmp_path: Path, old: str, new: str) -> Path:
    """The real compose file with one change, at tmp/docker/ so `context: ..` exists."""
    text = COMPOSE_FILE.read_text()
    assert old in text, f"{old!r} no longer in {COMPOSE_FILE}; update this test"
    target = tmp_path / "docker" / "compose.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text.replace(old, new))
    return target


def test_unmodified_copy_is_valid(compose: Compose, tmp_path: Path) -> None:
    # Control for the negative cases below: the copy itself is fine.
    copy = _mutated_copy(tmp_path, "services:", "services:")
    assert compose.run("config", "-q", file=copy).returncode == 0


@pytest.mark.parametrize(
    ("old", "new", "mentions"),
    [
        (
            "condition: service_completed_successfully",
            "condition: service_finished",
            "service_finished",
        ),
        (
            'command: ["worker"]\n    depends_on:\n      topics:',
            'command: ["worker"]\n    depends_on:\n      topicz:',
            "topicz",
        ),
        ("\nservices:\n", "\nservicez:\n", "servicez"),
    ],
    ids=["bad-condition", "undefined-dependency", "unknown-top-level-key"],
)
def test_broken_compose_file_is_rejected(
    compose: Compose, tmp_path: Path, old: str, new: str, mentions: str
) -> None:
    broken = _mutated_copy(tmp_path, old, new)
    proc = compose.run("config", "-q", file=broken)
    assert proc.returncode != 0, f"{mentions}: accepted by {' '.join(compose.argv)} config"
    assert mentions in proc.stderr + proc.stdout


def test_ensure_compose_script() -> None:
    assert os.access(ENSURE_COMPOSE, os.X_OK), f"{ENSURE_COMPOSE} is not executable"
    syntax = subprocess.run(
        ["bash", "-n", str(ENSURE_COMPOSE)], capture_output=True, text=True, check=False
    )
    assert syntax.returncode == 0, syntax.stderr
    if find_compose() is None:
        pytest.skip("no Compose installed; not running ensure-compose from a test")
    proc = subprocess.run(
        [str(ENSURE_COMPOSE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr


# ------------------------------------------------------------------------ Dockerfile


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):  # also inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    if current.strip():
        logical.append(current.strip())

    args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in logical:
        keyword, _, rest = instruction.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


def _words(rest: str) -> list[str]:
    """Exec form (JSON array) or shell words."""
    if rest.startswith("["):
        words: list[str] = json.loads(rest)
        return words
    return shlex.split(rest)


def _dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a folder
    excludes what is inside it; ``!`` re-includes."""
    ignore = ROOT / ".dockerignore"
    if not ignore.is_file():
        return False
    excluded = False
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for raw in ignore.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _context_copies(stages: list[Stage]) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY/ADD from the build context."""
    copies = []
    for stage in stages:
        for keyword, rest in stage.instructions:
            if keyword not in ("COPY", "ADD"):
                continue
            words = _words(re.sub(r"^(--\S+\s+)*", "", rest))
            if re.search(r"(^|\s)--from=", rest):
                continue
            copies.append((words[:-1], words[-1]))
    return copies


def test_dockerfile_is_multi_stage_on_python_311_slim(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert all(stage.base == "python:3.11-slim" for stage in stages), [s.base for s in stages]
    build_stage = stages[0]
    runs = " ".join(rest for keyword, rest in build_stage.instructions if keyword == "RUN")
    assert "pip wheel" in runs


def test_dockerfile_copy_sources_exist(stages: list[Stage]) -> None:
    copies = _context_copies(stages)
    assert copies, "no COPY from the build context"
    for sources, dest in copies:
        matched_any = False
        for source in sources:
            if any(ch in source for ch in "*?["):
                matches = [p for p in ROOT.glob(source.rstrip("/")) if p.exists()]
                matched_any |= bool(matches)
                continue
            path = ROOT / source
            assert path.exists(), f"COPY {source} {dest}: {source} is not in the repository"
            assert not _dockerignore_excludes(source), f"COPY {source}: excluded by .dockerignore"
            matched_any = True
        assert matched_any, f"COPY {sources} {dest}: no source matches anything"


def test_dockerfile_copies_symlink_targets(stages: list[Stage]) -> None:
    """src/rolebus/{wal,...} are symlinks to top-level folders: COPY keeps them as
    links, so their targets must be copied too, to the same relative place."""
    copied = {
        source.rstrip("/")
        for sources, dest in _context_copies(stages)
        for source in sources
        if dest.rstrip("/") in (source.rstrip("/"), ".")
    }
    links = [p for p in (ROOT / "src").rglob("*") if p.is_symlink()]
    assert links, "expected the src/rolebus symlinks"
    for link in links:
        target = link.resolve().relative_to(ROOT).as_posix()
        assert any(target == c or target.startswith(c + "/") for c in copied), (
            f"{link.relative_to(ROOT)} -> {target}: target is not COPYed into the image"
        )
        assert not _dockerignore_excludes(target), f"{target}: excluded by .dockerignore"


def test_dockerfile_entrypoint_is_the_console_script(stages: list[Stage]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    final = stages[-1].instructions
    entrypoints = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert entrypoints, "no ENTRYPOINT in the final stage"
    assert entrypoints[-1].startswith("["), "ENTRYPOINT should use the exec (JSON) form"
    entrypoint = _words(entrypoints[-1])
    assert entrypoint == ["rolebus"]
    assert scripts.get(entrypoint[0]) == "rolebus.cli:main", scripts
    cmds = [_words(rest) for keyword, rest in final if keyword == "CMD"]
    assert cmds and cmds[-1] == ["--help"]


def test_dockerfile_runs_as_non_root(stages: list[Stage]) -> None:
    users = [rest for keyword, rest in stages[-1].instructions if keyword == "USER"]
    assert users, "the final stage never leaves root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]


def test_parse_dockerfile_handles_continuations_and_forms() -> None:
    stages = parse_dockerfile(
        "ARG IMG=python:3.11-slim\n"
        "# comment\n"
        "FROM ${IMG} AS build\n"
        "COPY a b \\\n"
        "  ./\n"
        "FROM $IMG\n"
        "COPY --from=build /x /x\n"
        'ENTRYPOINT ["tool", "--flag"]\n'
    )
    assert [(s.base, s.name) for s in stages] == [
        ("python:3.11-slim", "build"),
        ("python:3.11-slim", None),
    ]
    assert _context_copies(stages) == [(["a", "b"], "./")]
    assert _words(stages[1].instructions[-1][1]) == ["tool", "--flag"]
