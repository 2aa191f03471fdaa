"""A tiny Llama checkpoint built locally, so the real vLLM engine runs with no hub.

``create_tiny_checkpoint(path)`` writes a complete Hugging Face model folder:
a byte-level BPE tokenizer trained with ``tokenizers`` on a corpus generated
here (deterministic, offline), saved as a ``PreTrainedTokenizerFast`` with
special tokens and a Llama-3-style chat template, and a 2-layer ``LlamaConfig``
model (hidden size 128, about 0.6 M parameters) with random weights, saved as
safetensors. Its output is gibberish: it exists to exercise vLLM, batching,
streaming, aborts and the context-window budget on a CPU, in CI and offline.

torch, transformers and tokenizers are imported inside the functions: this
module is importable by the web process, which must never load them.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Llama-3-style special tokens. The chat turn ends with <|eot_id|>, which is
# therefore the tokenizer's EOS (as in Llama-3-Instruct); <|end_of_text|> is a
# second stop token listed in generation_config.json.
BOS = "<|begin_of_text|>"
EOS = "<|eot_id|>"
END_OF_TEXT = "<|end_of_text|>"
PAD = "<|pad|>"
UNK = "<|unk|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
SPECIAL_TOKENS = (BOS, END_OF_TEXT, EOS, PAD, UNK, START_HEADER, END_HEADER)

# Renders system/user/assistant turns like Llama 3 and, with
# add_generation_prompt, opens the assistant's turn. vLLM and transformers both
# read it from tokenizer_config.json / chat_template.jinja.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] }}{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

VOCAB_SIZE = 1024
HIDDEN_SIZE = 128
INTERMEDIATE_SIZE = 256
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2
MAX_POSITION_EMBEDDINGS = 4096

_WORDS = """
the of and to in is was for on that with as by at from it this be are or an have not
which one all were they but their has there been when who will more no if out so said
what up its about than into them can only other new some could time these two may then
do first any my now such like our over man me even most made after also did many before
must through back years where much your way well down should because each just those
people how too little state good very make world still own see men work long get here
between both life being under never day same another know while last might us great old
year off come since against go came right used take three model token batch queue worker
stream answer engine request step prompt sequence cache layer value signal message reply
context window system user assistant text every quick steady bright calm clear question
river mountain city garden music story light water stone paper window morning evening
night summer winter spring autumn friend teacher student doctor market road bridge tower
ship train cloud forest field flower tree bird horse dog cat fish apple bread coffee tea
""".split()
_PUNCT = (".", ".", ".", "?", "!", ",")


def _corpus(seed: int, lines: int = 4000) -> Iterator[str]:
    """Deterministic English-ish sentences (plus a few chat-like and numeric lines).

    Uses its own ``random.Random(seed)``, so the corpus, and with it the trained
    tokenizer, is the same on every machine and Python version.
    """
    rng = random.Random(seed)
    roles = ("system", "user", "assistant")
    for i in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 18))]
        words[0] = words[0].capitalize()
        sentence = " ".join(words) + rng.choice(_PUNCT)
        if i % 7 == 0:
            sentence = f"{rng.choice(roles)}: {sentence}"
        if i % 11 == 0:
            sentence += f" {rng.randint(0, 9999)} {rng.random():.3f}"
        yield sentence


def _build_tokenizer(seed: int) -> object:
    """Train a byte-level BPE (every string is encodable, nothing maps to unk)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    # Plain (non-chat) prompts get BOS like Llama 3; the chat template writes
    # its own BOS, so chat prompts are encoded with add_special_tokens=False.
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[END_OF_TEXT, START_HEADER, END_HEADER],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITION_EMBEDDINGS,
        clean_up_tokenization_spaces=False,
    )


def create_tiny_checkpoint(path: Path, *, seed: int = 0) -> None:
    """Write a tiny random-weight Llama model and its tokenizer to ``path``.

    Preconditions: ``path`` does not exist or is an empty directory (callers
    decide about overwriting); torch, transformers and tokenizers are
    installed. The result is deterministic for a given ``seed`` and loads with
    ``transformers.AutoModelForCausalLM`` and with vLLM. Written to a sibling
    temporary directory first and renamed, so a crash never leaves a
    half-written checkpoint at ``path``.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer(seed)
    special = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        bos_token_id=special[BOS],
        eos_token_id=special[EOS],
        pad_token_id=special[PAD],
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    # Seeding the global generator is what makes the weights reproducible;
    # restore it afterwards so callers' own randomness is not disturbed.
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    finally:
        torch.random.set_rng_state(rng_state)
    model.generation_config = GenerationConfig(
        bos_token_id=special[BOS],
        eos_token_id=[special[EOS], special[END_OF_TEXT]],
        pad_token_id=special[PAD],
    )

    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)  # type: ignore[attr-defined]
        (staging / "tiny_model.json").write_text(
            json.dumps(
                {
                    "about": "random-weight test model made by inference.tiny_model; its text is gibberish",
                    "seed": seed,
                    "parameters": sum(p.numel() for p in model.parameters()),
                },
                indent=2,
            )
            + "\n"
        )
        if path.exists():
            path.rmdir()  # empty, checked above
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
