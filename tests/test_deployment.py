"""The compose file, Dockerfile, .env.example and the README's Deployment section agree with the
app's Settings and CLI (no Docker engine needed)."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import typer
import yaml

from app.cli import cli
from app.core.config import Settings
from tests.conftest import ROOT

DOCKER = ROOT / "docker"
SETTINGS_ENV = {f"TESSERA_{name.upper()}" for name in Settings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def _env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()]
    return {k: v for k, v in (p for p in pairs if len(p) == 2 and not p[0].startswith("#"))}


def _tessera_services(compose: dict) -> dict[str, dict]:
    """The services that run the Tessera runtime image (Ray services run `ray` instead)."""
    return {n: s for n, s in compose["services"].items() if "TESSERA_IMAGE" in s.get("image", "")}


def test_env_names_are_settings_and_every_setting_is_documented(compose: dict) -> None:
    example = _env_example()
    assert set(example) >= SETTINGS_ENV, f"undocumented: {SETTINGS_ENV - set(example)}"
    for name, service in _tessera_services(compose).items():
        for key in service.get("environment", {}):
            if key.startswith("TESSERA_"):
                assert key in SETTINGS_ENV, f"{name}: {key} is not a Settings field"
    # Every ${VAR} the compose file reads is documented in .env.example.
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (DOCKER / "docker-compose.yml").read_text()))
    assert used <= set(example), f"compose reads undocumented variables: {used - set(example)}"
    # Documented defaults are the Settings defaults.
    for name, field in Settings.model_fields.items():
        # container paths/addresses differ on purpose; the deployment sets a key and opens /metrics to its scraper
        if name not in {"host", "models_dir", "data_dir", "api_keys", "metrics_public"}:
            default = field.default
            shown = str(default).lower() if isinstance(default, bool) else str(default)
            assert example[f"TESSERA_{name.upper()}"] == shown, name


def test_ports_volumes_and_images_match_the_image(compose: dict, dockerfile: str) -> None:
    services = _tessera_services(compose)
    api = services["api"]
    image_env = dict(re.findall(r"(TESSERA_[A-Z_]+)=(\S+)", dockerfile))
    port = image_env["TESSERA_PORT"]
    assert port == str(Settings.model_fields["port"].default)
    assert f"EXPOSE {port}" in dockerfile
    assert any(p.endswith(f":{port}") for p in api["ports"])
    assert api["environment"]["TESSERA_PORT"] == port and f":{port}/health" in " ".join(api["healthcheck"]["test"])
    for name, service in services.items():
        mounts = {v.split(":")[1]: v for v in service["volumes"]}
        assert image_env["TESSERA_MODELS_DIR"] in mounts, name
        assert service["environment"]["TESSERA_MODELS_DIR"] == image_env["TESSERA_MODELS_DIR"]
        assert image_env["TESSERA_DATA_DIR"] in mounts, name
        assert service["environment"]["TESSERA_DATA_DIR"] == image_env["TESSERA_DATA_DIR"]
        assert service["build"]["target"] in re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.M)
    replica = services["api-replica"]
    assert replica["environment"]["TESSERA_READ_ONLY"] == "true"
    assert all(v.endswith(":ro") for v in replica["volumes"])
    assert set(compose["volumes"]) >= {"models", "data"}
    assert api["restart"] and api["cpus"] and api["mem_limit"]


def test_dockerfile_uses_the_makefile_install_steps(dockerfile: str) -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, re.M))
    used = [t for line in re.findall(r"^RUN make (.+)$", dockerfile, re.M) for t in line.split() if "=" not in t]
    assert {"install", "model", "install-serve"} <= set(used) and set(used) <= targets
    runtime = dockerfile.split("AS runtime", 1)[1].split("AS training", 1)[0]
    assert "torch" not in runtime.replace("no torch", "")
    assert re.search(r"^USER 10001", runtime, re.M) and "HEALTHCHECK" in runtime and "/health" in runtime


def _click_command(path: list[str]) -> Any:
    command = typer.main.get_command(cli)
    for name in path:
        assert hasattr(command, "commands"), path  # a group
        command = command.commands[name]
    return command


def _check_tessera_args(args: list[str]) -> None:
    """`tessera <sub...> --opts` must name real commands and options."""
    path = [a for a in args if not a.startswith("-")][:2]
    if path and path[0] == "serve":
        path = ["serve"]
    command = _click_command(path)
    known = {opt for p in command.params for opt in p.opts}
    for arg in args:
        if arg.startswith("--"):
            assert arg.split("=")[0] in known, f"tessera {' '.join(path)}: no option {arg}"


def test_compose_commands_are_real_cli_commands(compose: dict) -> None:
    for service in _tessera_services(compose).values():
        command = [c for c in service.get("command", []) if "${" not in c]
        if service.get("entrypoint"):
            continue  # ray services run `ray`
        _check_tessera_args(command)


def _readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Deployment", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line:
                commands.append(shlex.split(line))
    return commands


def test_readme_deployment_commands_match_the_files(compose: dict) -> None:
    commands = _readme_commands()
    assert len(commands) >= 8
    makefile_targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M))
    profiles = {p for s in compose["services"].values() for p in s.get("profiles", [])}
    seen_subcommands = set()
    for args in commands:
        if args[0] == "make":
            assert set(args[1:]) <= makefile_targets, args
        elif args[0] == "cp":
            assert (ROOT / args[1]).is_file(), args
        elif args[:2] == ["docker", "compose"]:
            rest = args[2:]
            options: dict[str, str] = {}
            while rest and (rest[0].startswith("--") or rest[0] == "-f"):
                options[rest[0]] = rest[1]
                rest = rest[2:]
            assert (ROOT / options["-f"]).resolve() == DOCKER / "docker-compose.yml"
            assert options["--env-file"] in {"docker/.env"}
            if "--profile" in options:
                assert options["--profile"] in profiles
            sub, *tail = rest
            seen_subcommands.add(sub)
            services = [t for t in tail if t in compose["services"]]
            for token in tail:
                if token.startswith("--scale"):
                    continue
                if "=" in token:
                    service = token.split("=")[0]
                    assert service in compose["services"], token
            if sub in {"restart", "run", "exec"}:
                assert services, args
            if sub == "exec":
                assert tail[1] == "tessera"
                _check_tessera_args(tail[2:])
            if sub == "cp":
                assert tail[1].split(":")[0] in compose["services"]
        else:
            pytest.fail(f"unexpected command in the README's Deployment section: {args}")
    assert {"build", "up", "run", "restart", "exec", "cp"} <= seen_subcommands


def test_the_front_door_config_passes_nginx_t_and_routes_reads_and_writes() -> None:
    """docker/nginx.conf (the replicas profile's `lb`): `nginx -t` with the compose service names
    resolved in a private mount namespace; reads go to the replicas, writes to the writer."""
    import shutil
    import subprocess

    if shutil.which("nginx") is None or shutil.which("unshare") is None:
        pytest.skip("nginx or unshare missing (.ci/run installs nginx-light)")
    result = subprocess.run(["bash", str(DOCKER / "nginx-check.sh")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    config = (DOCKER / "nginx.conf").read_text()
    assert "client_max_body_size 8m" in config  # = TESSERA_MAX_PAYLOAD_BYTES (8 MiB)
    assert Settings.model_fields["max_payload_bytes"].default == 8 * 1024 * 1024
    routes = re.findall(r'"~(\^[^"]+)"\s+(\w+);', config)

    def upstream(method: str, path: str) -> str:
        for pattern, target in routes:
            if re.match(pattern, f"{method} {path}"):
                return target
        return "tessera_writer"

    reads = [
        ("GET", "/indexes/docs"),
        ("POST", "/v1/embeddings"),
        ("POST", "/embed"),
        ("POST", "/v1/rerank"),
        ("POST", "/rerank"),
        ("POST", "/v2/rerank"),
        ("POST", "/indexes/docs/search"),
        ("GET", "/v1/models"),
    ]
    writes = [
        ("POST", "/indexes"),
        ("PUT", "/indexes/docs/documents"),
        ("DELETE", "/indexes/docs"),
        ("POST", "/indexes/docs/optimize"),
        ("POST", "/indexes/docs/documents/delete"),
        ("DELETE", "/indexes/docs/documents/a"),
    ]
    assert {upstream(m, p) for m, p in reads} == {"tessera_readers"}
    assert {upstream(m, p) for m, p in writes} == {"tessera_writer"}
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    assert compose["services"]["lb"]["profiles"] == ["replicas"]
