"""RewardModel scores as the RM trainer reads rewards; RewardStage, the reward-model scoring stage.

Also home of ``keyword_reward_model``: a tiny reward model set by hand so that its reward grows with
the share of "good" tokens in the conversation (test_sample.py uses it too)."""

from __future__ import annotations

import pytest
import torch

from synth.records import Message, SFTRecord
from synth.stages.reward import RewardModel, RewardStage
from synth.stages.select import best_of_k
from train.rm import RewardCollator, sequence_rewards, tokenize_row
from train.tiny import embedded_tokenizer, save_tiny_causal_lm, tiny_reward_model

WORD = "good"


def keyword_reward_model(tokenizer, word: str = WORD):
    """Embeddings carry a constant unit and a "word" flag; layer 0 attends uniformly (q = k = 0) and
    copies the flag's running mean into a third unit, which the score head reads. Every other weight
    is zero, so the reward is a strictly increasing function of the share of ``word`` tokens."""
    model = tiny_reward_model(tokenizer)
    ids = {tokenizer.convert_tokens_to_ids(t) for t in (word, "Ġ" + word)}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 1.0
        for i in ids:
            emb[i, 1] = 1.0
        for layer in model.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        attn = model.model.layers[0].self_attn
        attn.v_proj.weight[0, 1] = 1.0
        attn.o_proj.weight[2, 0] = 1.0
        model.model.norm.weight.fill_(1.0)
        model.score.weight[0, 2] = 1.0
    return model


def save_keyword_reward_model(path, tokenizer=None):
    tokenizer = tokenizer or embedded_tokenizer()
    keyword_reward_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tok():
    return embedded_tokenizer()


@pytest.fixture(scope="module")
def keyword_rm(tok, tmp_path_factory):
    return RewardModel(save_keyword_reward_model(tmp_path_factory.mktemp("kw_rm"), tok))


@pytest.fixture(scope="module")
def random_rm_dir(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("random_rm")
    tiny_reward_model(tok, seed=3).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


PAIRS = [
    (user("Tell me about cats."), "Cats are small.", "No."),
    (
        [{"role": "system", "content": "Be brief."}, *user("What is 2 + 2, and why does it matter?")],
        "It is 4, because two pairs make four. It matters for counting things.",
        "Five",
    ),
    (user("Hi"), "Hello there! How can I help you today with anything at all?", "Hey."),
]


@pytest.mark.parametrize("max_length", [1024, 40])
def test_scores_match_the_reward_model_trainer(tok, random_rm_dir, max_length):
    rm = RewardModel(random_rm_dir, batch_size=4, max_length=max_length)
    prompts = [p for p, _, _ in PAIRS for _ in range(2)]
    answers = [a for _, c, r in PAIRS for a in (c, r)]
    got = torch.tensor(rm.score(prompts, answers))

    model = rm.model
    expected = []
    for prompt, chosen, rejected in PAIRS:
        row = {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "edited": [],
            "strength": None,
        }
        batch = RewardCollator()([tokenize_row(row, tok, max_length, {})])
        with torch.no_grad():
            expected += sequence_rewards(model, batch).tolist()  # [chosen, rejected]
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    assert got.std() > 0  # a random head still tells the rows apart


def test_batching_and_padding_side_do_not_change_scores(random_rm_dir):
    prompts = [p for p, _, _ in PAIRS for _ in range(2)]
    answers = [a for _, c, r in PAIRS for a in (c, r)]
    one_by_one = [
        RewardModel(random_rm_dir, batch_size=1).score([p], [a])[0]
        for p, a in zip(prompts, answers, strict=True)
    ]
    batched = RewardModel(random_rm_dir, batch_size=6).score(prompts, answers)
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(one_by_one), atol=1e-5, rtol=1e-5)

    # a tokenizer that pads on the left (as generation engines set it) scores the same
    rm = RewardModel(random_rm_dir, batch_size=6)
    rm.tokenizer.padding_side = "left"
    from_left = rm.score(prompts, answers)
    torch.testing.assert_close(torch.tensor(from_left), torch.tensor(one_by_one), atol=1e-5, rtol=1e-5)


def test_duplicate_pairs_scored_once_and_lengths_checked(random_rm_dir):
    rm = RewardModel(random_rm_dir)
    calls = []
    forward = rm._forward
    rm._forward = lambda seqs: calls.append(len(seqs)) or forward(seqs)
    scores = rm.score([user("a"), user("a"), user("b")], ["x", "x", "x"])
    assert calls == [2] and scores[0] == scores[1] != scores[2]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        rm.score([user("a"), user("b")], ["x"])


def test_keyword_reward_model_ranks_by_good_tokens(keyword_rm):
    answers = ["bad bad bad", "good bad bad", "good good bad", "good good good"]
    scores = keyword_rm.score([user("Rate me.")] * 4, answers)
    assert scores == sorted(scores) and len(set(scores)) == 4
    assert scores[0] == 0.0  # no "good" token: no reward


def test_not_a_reward_model_is_refused(tmp_path, tok):
    path = save_tiny_causal_lm(tmp_path / "lm", tok)  # a causal LM: its config has no num_labels=1
    with pytest.raises(ValueError, match="num_labels=1"):
        RewardModel(path)


def record(rid: str, prompt_id: str, answer: str | None) -> SFTRecord:
    messages = [Message(role="user", content="Say something.")]
    if answer is not None:
        messages.append(Message(role="assistant", content=answer))
    return SFTRecord(id=rid, messages=messages, meta={"prompt_id": prompt_id})


def test_reward_stage_scores_each_response(keyword_rm):
    records = [
        record("p-0", "p", "good bad bad"),
        record("p-1", "p", "good good good"),
        record("p-2", "p", None),  # the engine returned nothing
        record("p-3", "p", "bad bad bad"),
    ]
    stage = RewardStage(name="rm_score", score="rm", rm=keyword_rm)
    out = stage(records)
    assert out is records and stage.model is keyword_rm
    with_response = [r for r in records if r.response]
    expected = keyword_rm.score(
        [[{"role": "user", "content": "Say something."}]] * 3, [r.response for r in with_response]
    )
    assert [r.scores["rm"] for r in with_response] == expected
    assert records[2].scores == {} and not records[2].kept
    assert records[2].verdicts[-1].stage == "rm_score" and records[2].verdicts[-1].reason == "no_response"

    best = best_of_k([r for r in records if r.kept], "rm")
    assert [r.id for r in best if r.kept] == ["p-1"]


class FixedRM:
    def __init__(self, rewards):
        self.rewards, self.calls = list(rewards), 0

    def score(self, prompts, responses):
        self.calls += 1
        return [self.rewards.pop(0) for _ in responses]


def test_reward_stage_loads_its_model_when_a_batch_needs_it():
    loaded = []

    def load():
        loaded.append(FixedRM([1.5, float("nan"), float("inf")]))
        return loaded[-1]

    stage = RewardStage(name="reward", score="r", rm=load)
    empty = stage([record("q-0", "q", None)])  # nothing to score: nothing loaded
    assert loaded == [] and empty[0].verdicts[-1].reason == "no_response"
    rows = stage([record("p-0", "p", "a"), record("p-1", "p", "b"), record("p-2", "p", "c")])
    assert len(loaded) == 1 and loaded[0].calls == 1
    assert rows[0].scores == {"r": 1.5} and rows[0].kept and rows[0].verdicts[-1].stage == "reward"
    assert [r.verdicts[-1].reason for r in rows[1:]] == ["r_not_finite", "r_not_finite"]
    assert all(r.scores == {} and not r.kept for r in rows[1:])
    stage([record("s-0", "s", None)])
    assert len(loaded) == 1  # loaded once
