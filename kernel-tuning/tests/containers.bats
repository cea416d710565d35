#!/usr/bin/env bats
# The sample container set-up: the compose file is valid YAML with the settings the README
# explains, and run-podman --dry-run prints both podman commands with them.

load helpers

@test "compose.yaml: both services share the producer's IPC namespace, keep-id, rtprio and memlock" {
    python3 -c 'import yaml' 2>/dev/null || skip "python3-yaml is not installed"
    run python3 - "$KT_DIR/containers/compose.yaml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
p, c = doc["services"]["producer"], doc["services"]["consumer"]
assert p["ipc"] == "shareable", p["ipc"]
assert c["ipc"] == "service:producer", c["ipc"]
for s in (p, c):
    assert s["userns_mode"] == "keep-id"
    assert s["ulimits"]["rtprio"] == {"soft": 95, "hard": 95}
    assert s["ulimits"]["memlock"] == {"soft": -1, "hard": -1}
    assert "SYS_NICE" in s["cap_add"]
assert p["shm_size"] == "512m"
assert "/dev/snd:/dev/snd" in p["devices"] and "devices" not in c
print("ok")
PY
    [ "$status" -eq 0 ]
    [ "$output" = ok ]
}

@test "run-podman --dry-run prints the two podman commands and runs nothing" {
    run env PATH=/nonexistent:/usr/bin:/bin VOXRING_AUDIO_CPU=1 "$KT_DIR/containers/run-podman" --dry-run my/image
    [ "$status" -eq 0 ]
    [ "$(grep -c '^+ podman run' <<<"$output")" -eq 2 ]
    [[ "$output" == *"--name voxring-producer --userns=keep-id --ulimit rtprio=95:95 --ulimit memlock=-1:-1 --cap-add=SYS_NICE --cpuset-cpus=1 --ipc=shareable --shm-size=512m"* ]]
    [[ "$output" == *"--name voxring-consumer --userns=keep-id"*"--ipc=container:voxring-producer my/image voxring segments list"* ]]
}
