"""core.secrets: env values that name account secrets (RunPod's `{{ RUNPOD_SECRET_<NAME> }}`), and the
shape of sealed text."""

from __future__ import annotations

from cryptography.fernet import Fernet

from ember.core.secrets import looks_sealed, resolve_env, secret_refs


def test_references_are_replaced_and_missing_ones_named() -> None:
    env = {
        "TOKEN": "{{ RUNPOD_SECRET_HF_TOKEN }}",
        "URL": "https://u:{{RUNPOD_SECRET_PASS}}@db/x",
        "PLAIN": "value {{ not a ref }}",
    }
    assert secret_refs(env) == {"HF_TOKEN", "PASS"}
    resolved, missing = resolve_env(env, {"HF_TOKEN": "hf_x"})
    assert resolved == {
        "TOKEN": "hf_x",
        "URL": "https://u:{{RUNPOD_SECRET_PASS}}@db/x",
        "PLAIN": env["PLAIN"],
    }
    assert missing == ["PASS"]
    assert resolve_env(env, {"HF_TOKEN": "a", "PASS": "b"}) == (
        {"TOKEN": "a", "URL": "https://u:b@db/x", "PLAIN": env["PLAIN"]},
        [],
    )


def test_sealed_text_is_told_from_plain_values() -> None:
    cipher = Fernet(Fernet.generate_key())
    for secret in ("", "x", "hf_" + "a" * 500):
        assert looks_sealed(cipher.encrypt(secret.encode()).decode())
    for plain in ("", "hf_abc", "gAAAAAshort", "plain-hook-secret", "g" * 200):
        assert not looks_sealed(plain)
