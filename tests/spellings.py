"""Other spellings of one identifier, for the tests that make sure the server refuses them
(README "Identifiers, scopes and min_revision")."""

from __future__ import annotations


def uuid_spellings(canonical: str) -> dict[str, str]:
    """Every other spelling Postgres' uuid input reads as the same uuid as `canonical`
    (the server must refuse every one); none equals `canonical` itself."""
    digits = canonical.replace("-", "")
    spellings = {
        "upper": canonical.upper(),
        "mixed case": canonical[:19] + canonical[19:].upper(),
        "no hyphens": digits,
        "no hyphens, upper": digits.upper(),
        "braces": "{" + canonical + "}",
        "braces, no hyphens": "{" + digits + "}",
        "urn": f"urn:uuid:{canonical}",
        "hyphen every 4": "-".join(digits[i : i + 4] for i in range(0, 32, 4)),
        "braces, hyphen every 8": "{" + "-".join(digits[i : i + 8] for i in range(0, 32, 8)) + "}",
    }
    return {name: spelling for name, spelling in spellings.items() if spelling != canonical}
