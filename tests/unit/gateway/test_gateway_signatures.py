"""Signature verification: only Stripe's fresh signatures over the exact bytes pass."""

import time

import stripe

from gateway.signatures import STRIPE_SIGNATURE_TOLERANCE_SECONDS, verify

OLD_SECRET = "whsec_old_0123456789abcdef"
NEW_SECRET = "whsec_new_0123456789abcdef"
PAYLOAD = '{"id": "evt_1", "object": "event"}'


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    header: str = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp)
    return header


def test_a_fresh_signature_by_a_held_secret_passes() -> None:
    assert verify(PAYLOAD, sign(PAYLOAD, OLD_SECRET), [OLD_SECRET])


def test_during_rotation_either_secret_passes() -> None:
    secrets = [OLD_SECRET, NEW_SECRET]
    now = int(time.time())
    both = f"{sign(PAYLOAD, OLD_SECRET, now)},v1={sign(PAYLOAD, NEW_SECRET, now).split('v1=')[1]}"

    assert verify(PAYLOAD, sign(PAYLOAD, OLD_SECRET), secrets)
    assert verify(PAYLOAD, sign(PAYLOAD, NEW_SECRET), secrets)
    assert verify(PAYLOAD, both, [NEW_SECRET])
    assert verify(PAYLOAD, both, [OLD_SECRET])


def test_a_signature_by_another_secret_fails() -> None:
    assert not verify(PAYLOAD, sign(PAYLOAD, "whsec_someone_else_000000"), [OLD_SECRET])


def test_a_tampered_body_fails() -> None:
    header = sign(PAYLOAD, OLD_SECRET)

    assert not verify(PAYLOAD.replace("evt_1", "evt_2"), header, [OLD_SECRET])
    assert not verify(PAYLOAD + " ", header, [OLD_SECRET])


def test_a_stale_signature_fails() -> None:
    stale = int(time.time()) - STRIPE_SIGNATURE_TOLERANCE_SECONDS - 5

    assert not verify(PAYLOAD, sign(PAYLOAD, OLD_SECRET, stale), [OLD_SECRET])


def test_a_missing_or_malformed_header_fails() -> None:
    for header in (None, "", "garbage", "t=abc,v1=00", "v1=00", "t=1", "t=1,v0=00"):
        assert not verify(PAYLOAD, header, [OLD_SECRET])
    assert not verify(PAYLOAD, "t=1," + "v1=0," * 2000, [OLD_SECRET])


def test_no_secret_verifies_nothing() -> None:
    assert not verify(PAYLOAD, sign(PAYLOAD, OLD_SECRET), [])


def test_a_header_with_a_non_ascii_character_fails() -> None:
    header = sign(PAYLOAD, OLD_SECRET)
    timestamp, signature = header.split(",v1=")

    for forged in (f"{timestamp},v1=\xff{signature[1:]}", f"{header},v1=é", f"{header},x=\u2028"):
        assert not verify(PAYLOAD, forged, [OLD_SECRET])
