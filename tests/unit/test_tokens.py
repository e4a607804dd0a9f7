from __future__ import annotations

from scalemule.core import tokens


def test_generated_tokens_are_well_formed_and_distinct() -> None:
    made = {tokens.generate() for _ in range(200)}
    assert len(made) == 200
    for token in made:
        assert token.startswith("smk_") and len(token) == tokens.TOKEN_LENGTH
        assert tokens.is_well_formed(token)


def test_a_single_typo_fails_the_checksum() -> None:
    token = tokens.generate()
    for i in range(len(tokens.PREFIX), len(token)):
        replacement = "a" if token[i] != "a" else "b"
        assert not tokens.is_well_formed(token[:i] + replacement + token[i + 1 :])


def test_wrong_shapes_are_rejected() -> None:
    token = tokens.generate()
    for bad in [
        "",
        "smk_",
        token[:-1],
        token + "x",
        "sk_" + token[3:],
        token.replace("smk_", "SMK_"),
        token[:10] + "!" + token[11:],
    ]:
        assert not tokens.is_well_formed(bad)
