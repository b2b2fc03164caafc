"""`keyswarm init`, `enroll-node`, `enroll-client` and `token` from the command line.

The whole flow runs in-process through `keyswarm.cli.main` on soft tokens and
on virtual YubiKeys (firmware 5.4.3: P-256; 5.7.2: Ed25519, with the latency
model off), then the results are checked independently: `verify_chain` and
`openssl verify` accept the node and client certificates, file modes are
right, and the domain key the node got opens on the node's token to the very
key the root sealed at init. One run goes through a real `python -m
keyswarm` process. Hostile input (a PEM that is no certificate, a root from
another network, a wrong passphrase, missing or damaged token files, ...)
must end with exit 1 and one `error:` line, or exit 2 for malformed arguments.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from yubikit.piv import SLOT, PivSession

from keyswarm.cli import main
from keyswarm.crypto.certificates import network_id
from keyswarm.crypto.chain_verify import verify_chain
from keyswarm.crypto.sealing import unseal_domain_key_with_token
from keyswarm.hardware.soft_token import SoftToken
from keyswarm.hardware.specs import open_token
from keyswarm.hardware.virtual_yubikey import VirtualYubiKey
from keyswarm.node.local_network import child_environment

pytestmark = pytest.mark.integration

PIN = "123456"  # a virtual YubiKey's factory PIN
OPENSSL = shutil.which("openssl")


@pytest.fixture(autouse=True)
def _pin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSWARM_PIN", PIN)
    monkeypatch.setenv("ROOT_PASSPHRASE", "correct horse battery staple")
    monkeypatch.setenv("WRONG_PASSPHRASE", "incorrect horse")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ok(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run(argv, capsys)
    assert code == 0, f"{argv}: exit {code}: {err}"
    return out


def fails(argv: list[str], capsys: pytest.CaptureFixture[str], *, code: int = 1, match: str = "") -> str:
    got, out, err = run(argv, capsys)
    assert got == code, f"{argv}: exit {got}, expected {code}: {out} {err}"
    if code == 1:
        lines = [line for line in err.splitlines() if not line.startswith("warning:")]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert "Traceback" not in err
    assert match.lower() in err.lower(), f"{match!r} not in {err!r}"
    return err


def field(out: str, label: str) -> str:
    for line in out.splitlines():
        name, _, value = line.partition(":")
        if name == label:
            return value.strip()
    raise AssertionError(f"no {label!r} line in {out!r}")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load_pem(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --- token kinds ---------------------------------------------------------------------------


class Tokens:
    """Token specs of one kind in `tmp`: where `init` and `enroll-node` put them."""

    def __init__(self, kind: str, tmp: Path, firmware: str | None = None):
        self.kind, self.tmp, self.firmware = kind, tmp, firmware

    def spec(self, name: str, *, new: bool = False) -> str:
        if self.kind == "soft":
            return f"soft:{self.tmp / (name + '.key')}"
        query = f"fw={self.firmware}&latency=zero" if new else "latency=zero"
        return f"virtual:{self.tmp / (name + '.vyk')}?{query}"

    @property
    def root_secret(self) -> list[str]:
        return ["--passphrase-env", "ROOT_PASSPHRASE"] if self.kind == "soft" else []

    @property
    def issuer_secret(self) -> list[str]:
        return ["--root-passphrase-env", "ROOT_PASSPHRASE"] if self.kind == "soft" else []

    def open(self, name: str):
        if self.kind == "soft":
            passphrase = os.environ["ROOT_PASSPHRASE"] if name == "root" else None
            return SoftToken.open(self.tmp / (name + ".key"), passphrase=passphrase)
        return open_token(self.spec(name), pin=PIN)

    @property
    def algorithm(self) -> str:
        return "p256" if self.firmware == "5.4.3" else "ed25519"


KINDS = [("soft", None), ("virtual", "5.4.3"), ("virtual", "5.7.2")]


def init(tokens: Tokens, capsys, out: str = "net", name: str = "acme", *extra: str) -> str:
    return ok(["init", "--token", tokens.spec("root", new=True), "--network-name", name,
               "--out", str(tokens.tmp / out), *tokens.root_secret, *extra], capsys)


def enroll_node(tokens: Tokens, capsys, node: str = "n1", net: str = "net", *extra: str) -> str:
    return ok(["enroll-node", "--root-token", tokens.spec("root"), "--root-cert", str(tokens.tmp / net / "root.pem"),
               "--node-token", tokens.spec(node, new=True), "--name", node, "--out", str(tokens.tmp / node),
               *tokens.issuer_secret, *extra], capsys)


def issuer_args(tokens: Tokens, net: str = "net") -> list[str]:
    secret = ["--issuer-passphrase-env", "ROOT_PASSPHRASE"] if tokens.kind == "soft" else []
    return ["--issuer-token", tokens.spec("root"), "--issuer-cert", str(tokens.tmp / net / "root.pem"), *secret]


# --- the flow ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "firmware"), KINDS, ids=["soft", "virtual-5.4.3", "virtual-5.7.2"])
def test_init_enroll_node_enroll_client(kind: str, firmware: str | None, tmp_path: Path, capsys) -> None:
    tokens = Tokens(kind, tmp_path, firmware)
    out = init(tokens, capsys)
    net = field(out, "network id")
    root_cert = load_pem(tmp_path / "net" / "root.pem")
    assert network_id(root_cert) == net and field(out, "root") == f"keyswarm://{net}/root"
    assert tokens.algorithm in field(out, "root token")

    out = enroll_node(tokens, capsys)
    assert field(out, "node") == f"keyswarm://{net}/node/n1"
    key_file = tmp_path / "c1" / "c1.key"
    (tmp_path / "c1").mkdir(mode=0o700)
    out = ok(["enroll-client", *issuer_args(tokens), "--name", "c1", "--out", str(tmp_path / "c1"),
              "--key-file", str(key_file)], capsys)
    assert field(out, "client") == f"keyswarm://{net}/client/c1"

    # Modes: secrets 0600, certificates 0644, new directories 0700.
    for secret in (tmp_path / "net" / "domain-key.sealed", tmp_path / "n1" / "domain-key.sealed", key_file):
        assert mode(secret) == 0o600, secret
    for cert in ("net/root.pem", "n1/node.pem", "n1/root.pem", "c1/client.pem"):
        assert mode(tmp_path / cert) == 0o644, cert
    assert mode(tmp_path / "net") == 0o700 and mode(tmp_path / "n1") == 0o700

    now = datetime.now(timezone.utc)
    node_cert = load_pem(tmp_path / "n1" / "node.pem")
    node = verify_chain(node_cert, [], root_cert, now=now, network_id=net, expected_kind="node")
    client = verify_chain(load_pem(tmp_path / "c1" / "client.pem"), [], root_cert, now=now, network_id=net,
                          expected_kind="client")
    assert (node.name, client.name) == ("n1", "c1")
    assert load_pem(tmp_path / "n1" / "root.pem") == root_cert

    # The client's key file holds the certified key.
    private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert private.public_key() == client.public_key

    # The node token holds the certified key and the certificate; the domain key opens on it.
    with tokens.open("root") as root_token, tokens.open("n1") as node_token:
        assert node_token.identity_public_key() == node.public_key
        assert node_token.read_certificate("identity") == node_cert.public_bytes(serialization.Encoding.DER)
        assert root_token.read_certificate("identity") == root_cert.public_bytes(serialization.Encoding.DER)
        at_root = unseal_domain_key_with_token(root_token, (tmp_path / "net" / "domain-key.sealed").read_bytes())
        at_node = unseal_domain_key_with_token(node_token, (tmp_path / "n1" / "domain-key.sealed").read_bytes())
    assert at_node.secret == at_root.secret and at_node.key_id == at_root.key_id
    assert (tmp_path / "n1" / "domain-key.sealed").read_bytes() != (tmp_path / "net" / "domain-key.sealed").read_bytes()

    if OPENSSL is not None:
        result = subprocess.run(
            [OPENSSL, "verify", "-CAfile", str(tmp_path / "net" / "root.pem"),
             str(tmp_path / "n1" / "node.pem"), str(tmp_path / "c1" / "client.pem")],
            capture_output=True, text=True, timeout=30,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count(": OK") == 2


@pytest.mark.parametrize("firmware", ["5.4.3", "5.7.2"])
def test_client_key_in_a_virtual_yubikeys_slot_9a(firmware: str, tmp_path: Path, capsys) -> None:
    tokens = Tokens("virtual", tmp_path, "5.7.2")
    net = field(init(tokens, capsys), "network id")
    device = tmp_path / "client.vyk"
    out = ok(["enroll-client", *issuer_args(tokens), "--name", "app1", "--out", str(tmp_path / "app1"),
              "--yubikey-slot-9a", f"virtual:{device}?fw={firmware}&latency=zero"], capsys)
    assert "slot 9a" in field(out, "key")
    cert = load_pem(tmp_path / "app1" / "client.pem")
    verified = verify_chain(cert, [], load_pem(tmp_path / "net" / "root.pem"), now=datetime.now(timezone.utc),
                            network_id=net, expected_kind="client")
    piv = PivSession(VirtualYubiKey.load(device))
    assert piv.get_slot_metadata(SLOT.AUTHENTICATION).public_key == verified.public_key
    assert piv.get_certificate(SLOT.AUTHENTICATION) == cert
    assert isinstance(verified.public_key, Ed25519PublicKey if firmware == "5.7.2" else ec.EllipticCurvePublicKey)

    # The key already in the slot is certified again, never replaced.
    ok(["enroll-client", *issuer_args(tokens), "--name", "app1", "--out", str(tmp_path / "app1"), "--force",
        "--yubikey-slot-9a", f"virtual:{device}"], capsys)
    assert load_pem(tmp_path / "app1" / "client.pem").public_key() == verified.public_key


def test_the_flow_through_a_real_process(tmp_path: Path) -> None:
    env = {**child_environment(), "KEYSWARM_PIN": PIN}

    def keyswarm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "keyswarm", *args], capture_output=True, text=True,
                              timeout=60, env=env, cwd=tmp_path)

    done = keyswarm("init", "--token", "soft:root.key", "--network-name", "proc", "--out", "net")
    assert done.returncode == 0, done.stderr
    assert "NOT hardware-protected" in done.stderr
    net = field(done.stdout, "network id")
    done = keyswarm("enroll-node", "--root-token", "soft:root.key", "--root-cert", "net/root.pem",
                    "--node-token", "virtual:n1.vyk?latency=zero", "--name", "n1", "--out", "n1")
    assert done.returncode == 0, done.stderr
    assert field(done.stdout, "node") == f"keyswarm://{net}/node/n1"
    done = keyswarm("enroll-client", "--issuer-token", "soft:root.key", "--issuer-cert", "net/root.pem",
                    "--name", "c1", "--out", "c1", "--key-file", "c1.key")
    assert done.returncode == 0, done.stderr
    done = keyswarm("enroll-node", "--root-token", "soft:missing.key", "--root-cert", "net/root.pem",
                    "--node-token", "soft:n2.key", "--name", "n2", "--out", "n2")
    assert done.returncode == 1 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr


# --- tokens ----------------------------------------------------------------------------------


def test_token_info_and_list(tmp_path: Path, capsys) -> None:
    tokens = Tokens("virtual", tmp_path, "5.4.3")
    net = field(init(tokens, capsys), "network id")
    out = ok(["token", "info", "--token", tokens.spec("root")], capsys)
    assert field(out, "kind").startswith("virtual") and field(out, "firmware") == "5.4.3"
    assert field(out, "algorithms") == "identity p256, sealing p256"
    assert field(out, "PIN tries left") == "3"
    assert field(out, "identity certificate").startswith(f"keyswarm://{net}/root")
    assert field(out, "identity key").startswith(net)  # the network id is the key fingerprint's first half

    ok(["init", "--token", f"soft:{tmp_path / 'other.key'}", "--network-name", "x", "--out", str(tmp_path / "o")], capsys)
    out = ok(["token", "info", "--token", f"soft:{tmp_path / 'other.key'}", "--json"], capsys)
    assert '"kind": "soft"' in out and '"hardware_protected": false' in out

    code, out, err = run(["token", "list"], capsys)
    assert code == 0  # no YubiKey (or no PC/SC at all) is not an error
    assert out.strip() == "no YubiKey found" or "yubikey:" in out


# --- refusals and hostile input -----------------------------------------------------------------


def test_init_refuses_to_overwrite_a_root_unless_forced(tmp_path: Path, capsys) -> None:
    tokens = Tokens("soft", tmp_path)
    first = field(init(tokens, capsys), "network id")
    fails(["init", "--token", tokens.spec("root"), "--network-name", "acme", "--out", str(tmp_path / "net"),
           *tokens.root_secret], capsys, match="already exists")
    fails(["init", "--token", tokens.spec("root"), "--network-name", "acme", "--out", str(tmp_path / "elsewhere"),
           *tokens.root_secret], capsys, match="already holds a certificate")
    again = field(init(tokens, capsys, "net", "acme", "--force"), "network id")
    assert again != first  # --force made a new root key: a new network


def test_hostile_certificates_and_tokens(tmp_path: Path, capsys) -> None:
    tokens = Tokens("soft", tmp_path)
    init(tokens, capsys)
    other = Tokens("soft", tmp_path / "other")
    (tmp_path / "other").mkdir()
    init(other, capsys)
    enroll_node(tokens, capsys)
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    (tmp_path / "empty.pem").write_bytes(b"")

    def node_with(root_cert: str, *extra: str, root_token: str | None = None, node: str = "n9") -> list[str]:
        return ["enroll-node", "--root-token", root_token or tokens.spec("root"), "--root-cert", root_cert,
                "--node-token", tokens.spec(node), "--name", node, "--out", str(tmp_path / node),
                *tokens.issuer_secret, *extra]

    fails(node_with(str(tmp_path / "garbage.pem")), capsys, match="not a PEM X.509 certificate")
    fails(node_with(str(tmp_path / "empty.pem")), capsys, match="not a PEM X.509 certificate")
    fails(node_with(str(tmp_path / "nope.pem")), capsys, match="no such file")
    fails(node_with(str(tmp_path / "n1" / "node.pem")), capsys, match="is a node certificate")
    fails(node_with(str(tmp_path / "other" / "net" / "root.pem")), capsys, match="do not belong together")
    # The sealed domain key of another network does not open on this root token.
    fails(node_with(str(tmp_path / "net" / "root.pem"), "--domain-key", str(tmp_path / "other" / "net" / "domain-key.sealed")),
          capsys, match="does not open with root token")
    # A client certificate issued by another network's root.
    fails(["enroll-client", *issuer_args(tokens, "other/net"), "--name", "c1", "--out", str(tmp_path / "c"),
           "--key-file", str(tmp_path / "c.key")], capsys, match="do not belong together")
    assert not (tmp_path / "c.key").exists()  # a refusal writes nothing
    # The root token used as a node token.
    fails(node_with(str(tmp_path / "net" / "root.pem"), "--node-passphrase-env", "ROOT_PASSPHRASE", node="root"),
          capsys, match="is the root token")
    assert not (tmp_path / "root").exists()  # no output directory made for a refusal
    # A node token that is already enrolled, then re-issued with --force.
    fails(node_with(str(tmp_path / "net" / "root.pem"), node="n1"), capsys, match="already")
    ok(node_with(str(tmp_path / "net" / "root.pem"), "--force", node="n1"), capsys)


def test_hostile_token_files_and_secrets(tmp_path: Path, capsys) -> None:
    tokens = Tokens("soft", tmp_path)
    init(tokens, capsys)
    root_pem = str(tmp_path / "net" / "root.pem")

    def node_with(root_token: str, *secret: str) -> list[str]:
        return ["enroll-node", "--root-token", root_token, "--root-cert", root_pem, "--node-token",
                tokens.spec("n2"), "--name", "n2", "--out", str(tmp_path / "n2"), *secret]

    fails(node_with(tokens.spec("root"), "--root-passphrase-env", "WRONG_PASSPHRASE"), capsys, match="wrong passphrase")
    fails(node_with(tokens.spec("root")), capsys, match="no passphrase was given")
    fails(node_with(tokens.spec("root"), "--root-passphrase-env", "UNSET_VARIABLE"), capsys, match="not set")
    fails(node_with(f"soft:{tmp_path / 'missing.key'}"), capsys, match="missing.key")
    fails(node_with(f"virtual:{tmp_path / 'missing.vyk'}"), capsys, match="no virtual YubiKey state")
    damaged = tmp_path / "damaged.key"
    damaged.write_bytes(b"KSWTOKEN\x01\x00" + b"\x01" * 20)
    damaged.chmod(0o600)
    fails(node_with(f"soft:{damaged}"), capsys, match="not a valid keyswarm key file")
    damaged_virtual = tmp_path / "damaged.vyk"
    damaged_virtual.write_text('{"format": "something else"}')
    fails(node_with(f"virtual:{damaged_virtual}"), capsys, match="unreadable")
    assert not (tmp_path / "n2" / "node.pem").exists()


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["init", "--token", "usb:foo", "--network-name", "x", "--out", "o"], "must start with one of"),
        (["init", "--token", "virtual:x?fw=5.7.2&colour=red", "--network-name", "x", "--out", "o"], "unknown parameter"),
        (["init", "--token", "soft:r.key", "--network-name", "x", "--out", "o", "--lifetime-days", "0"], "between 1"),
        (["init", "--token", "soft:r.key", "--network-name", "x", "--out", "o", "--pin-env", "1BAD"], "environment"),
        (["enroll-node", "--root-token", "soft:r", "--root-cert", "r.pem", "--node-token", "soft:n",
          "--name", "n 1", "--out", "o"], "a name is"),
        (["enroll-client", "--issuer-token", "soft:r", "--issuer-cert", "r.pem", "--name", "c", "--out", "o"],
         "one of the arguments"),
        (["enroll-client", "--issuer-token", "soft:r", "--issuer-cert", "r.pem", "--name", "c", "--out", "o",
          "--key-file", "k", "--yubikey-slot-9a", "123"], "not allowed with"),
        (["enroll-client", "--issuer-token", "soft:r", "--issuer-cert", "r.pem", "--name", "c", "--out", "o",
          "--yubikey-slot-9a", "soft:x"], "give a YubiKey serial"),
        (["token", "info"], "--token"),
    ],
)
def test_malformed_arguments_exit_2(argv: list[str], match: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    fails(argv, capsys, code=2, match=match)
    assert not any(tmp_path.iterdir())  # nothing created


def test_paths_are_checked(tmp_path: Path, capsys) -> None:
    (tmp_path / "a-file").write_text("x")
    fails(["init", "--token", f"soft:{tmp_path / 'r.key'}", "--network-name", "x", "--out", str(tmp_path / "a-file")],
          capsys, match="not a directory")
    fails(["init", "--token", f"soft:{tmp_path / 'no' / 'such' / 'r.key'}", "--network-name", "x",
           "--out", str(tmp_path / "o")], capsys, match="does not exist")
    fails(["init", "--token", f"soft:{tmp_path}", "--network-name", "x", "--out", str(tmp_path / "o")],
          capsys, match="is a directory")
    fails(["init", "--token", f"soft:{tmp_path / 'r.key'}", "--network-name", "x" * 65, "--out", str(tmp_path / "o")],
          capsys, match="network name")


def test_client_key_file_with_a_passphrase_and_refusals_of_the_client_device(tmp_path: Path, capsys, monkeypatch) -> None:
    tokens = Tokens("virtual", tmp_path, "5.7.2")
    init(tokens, capsys)
    key_file = tmp_path / "c1.key"
    ok(["enroll-client", *issuer_args(tokens), "--name", "c1", "--out", str(tmp_path / "c1"),
        "--key-file", str(key_file), "--key-passphrase-env", "ROOT_PASSPHRASE"], capsys)
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    private = serialization.load_pem_private_key(key_file.read_bytes(), password=b"correct horse battery staple")
    assert private.public_key() == load_pem(tmp_path / "c1" / "client.pem").public_key()
    fails(["enroll-client", *issuer_args(tokens), "--name", "c1", "--out", str(tmp_path / "c2"),
           "--key-file", str(key_file)], capsys, match="already exists")

    root_device = tmp_path / "root.vyk"
    fails(["enroll-client", *issuer_args(tokens), "--name", "c2", "--out", str(tmp_path / "c2"),
           "--yubikey-slot-9a", f"virtual:{root_device}?latency=zero"], capsys, match="issuer's token")
    monkeypatch.setenv("BAD_KEY", "not hex")
    fails(["enroll-client", *issuer_args(tokens), "--name", "c2", "--out", str(tmp_path / "c2"),
           "--yubikey-slot-9a", f"virtual:{tmp_path / 'c2.vyk'}", "--client-management-key-env", "BAD_KEY"],
          capsys, match="hex")
    monkeypatch.setenv("OTHER_KEY", "00" * 24)
    fails(["enroll-client", *issuer_args(tokens), "--name", "c2", "--out", str(tmp_path / "c2"),
           "--yubikey-slot-9a", f"virtual:{tmp_path / 'c2.vyk'}?latency=zero", "--client-management-key-env", "OTHER_KEY"],
          capsys, match="slot 9a")
    assert not (tmp_path / "c2" / "client.pem").exists()


def test_a_wrong_or_missing_pin_stops_with_the_tries_left(tmp_path: Path, capsys, monkeypatch) -> None:
    tokens = Tokens("virtual", tmp_path, "5.4.3")
    init(tokens, capsys)
    monkeypatch.setenv("WRONG_PIN", "654321")
    monkeypatch.delenv("KEYSWARM_PIN")
    base = ["enroll-node", "--root-token", tokens.spec("root"), "--root-cert", str(tmp_path / "net" / "root.pem"),
            "--node-token", tokens.spec("n1", new=True), "--name", "n1", "--out", str(tmp_path / "n1")]
    fails([*base, "--root-pin-env", "WRONG_PIN"], capsys, match="wrong PIN")
    fails(base, capsys, match="no PIV PIN")
    out = ok(["token", "info", "--token", tokens.spec("root")], capsys)
    assert field(out, "PIN tries left") == "2"  # one wrong try, and only one
    assert not (tmp_path / "n1").exists()
