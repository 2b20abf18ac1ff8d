"""A small verifiable long-context task for learning tests: the document is filler words with one
`key vN` somewhere; the question asks for the key; the answer is `vN`. Word-level tokenizer
(one token per word), a tiny Qwen3, and a teacher trained on the task with our own SFT recipe."""

from __future__ import annotations

import random
from pathlib import Path

FILLER = [f"f{i}" for i in range(40)]
VALUES = [f"v{i}" for i in range(8)]
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenizer_dir(out: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    words = specials + ["user", "assistant", "system", "what", "is", "the", "key", "?", "[UNK]"] + FILLER + VALUES
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": specials[1:2]})
    fast.chat_template = CHATML
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return out


def rows(n: int, seed: int, min_words: int = 16, max_words: int = 40) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(min_words, max_words))]
        value = rng.choice(VALUES)
        words.insert(rng.randint(0, len(words)), f"key {value}")
        out.append({"id": f"{seed}-{i}", "document": " ".join(words), "source": "synthetic", "language": "en",
                    "question": "what is the key ?", "answer": value})
    return out


def write_parquet(path: Path, n: int, seed: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows(n, seed)), path)
    return path


def model_dir(out: Path, tokenizer_path: Path, seed: int, hidden: int = 64, layers: int = 2) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out



def greedy_accuracy(model: Path, n: int, seed: int) -> float:
    """Exact-match accuracy of greedy answers on `n` fresh rows (through the `hf` rollout engine)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.config import RolloutConfig
    from trainer.data import template_ids
    from trainer.rollout import HFEngine

    lm, tok = AutoModelForCausalLM.from_pretrained(model), AutoTokenizer.from_pretrained(model)
    task_rows = rows(n, seed)
    prompts = [template_ids(tok, [{"role": "user", "content": f"{r['document']}\n\n{r['question']}"}],
                            add_generation_prompt=True) for r in task_rows]
    groups = HFEngine(lm, tok, RolloutConfig(group_size=1, max_new_tokens=3, temperature=0.0)).generate(prompts, [0] * n)
    answers = [tok.decode(g[0].completion_ids, skip_special_tokens=True).strip() for g in groups]
    return sum(a == r["answer"] for a, r in zip(answers, task_rows)) / n

def short_answer_reward(completion: str, reference: object, row: dict) -> float:
    """A reward by dotted path (`copy_task:short_answer_reward`): 1 for a one-word answer."""
    return float(len(completion.split()) == 1)


_calls = {"n": 0}


def flaky_reward(completion: str, reference: object, row: dict) -> float:
    """Raises on every third call: the recipe must record it and exclude the rollout."""
    _calls["n"] += 1
    if _calls["n"] % 3 == 0:
        raise RuntimeError("scripted reward failure")
    return 1.0
