"""Every method on the architectures we serve, built tiny from their configs (no weights can be downloaded)."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
from transformers import Qwen2Config, Qwen2ForCausalLM

from retain import ContinualTrainer, build_method

from conftest import fact_task


def llama32(vocab: int) -> LlamaForCausalLM:
    """Llama-3.2-1B's shape (grouped-query attention, llama3 rope scaling, tied embeddings), scaled down."""
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, tie_word_embeddings=True, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192}, max_position_embeddings=1024))


def qwen2(vocab: int) -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))


def mistral(vocab: int) -> MistralForCausalLM:
    return MistralForCausalLM(MistralConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, sliding_window=64))


def gpt2(vocab: int) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=256))


METHODS = {"full_ft": {}, "aria": {"adapter_dim": "8", "fisher_samples": "2", "warmup_steps": "0"}, "lora": {"r": "4"}, "ewc": {"fisher_samples": "2"}, "replay": {"ratio": "0.5"},
           "smf": {"k": "4", "top_t": "8"},
           "smf/product_key": {"memory": "product_key", "n_keys": "8", "heads": "2", "k": "4", "key_dim": "8", "top_t": "8"}}


@pytest.mark.parametrize("architecture", [llama32, qwen2, mistral, gpt2], ids=lambda f: f.__name__)
@pytest.mark.parametrize("method_name", sorted(METHODS))
def test_method_trains_and_evaluates_on_architecture(architecture, method_name, tokenizer, training_args, small_stream):
    torch.manual_seed(0)
    model = architecture(len(tokenizer)).eval()  # GPT-2 has dropout: compare outputs without it
    ids = torch.tensor([tokenizer(small_stream.tasks[0].train[0]["text"]).input_ids])  # text it will train on
    with torch.no_grad():
        before = model(input_ids=ids).logits
    trainer = ContinualTrainer(model, training_args(num_train_epochs=1), method=build_method(method_name.split("/")[0], METHODS[method_name]),
                               processing_class=tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(trainer.model(input_ids=ids).logits, before)  # preparing changes nothing yet
    trainer.start_stream(small_stream)
    for task in small_stream.tasks[:2]:
        trainer.add_task(task)
        trainer.consolidate_task()
    row = trainer.evaluate_all_tasks(small_stream.tasks, small_stream.general)
    assert len(row.em) == 3 and row.general_ppl > 1
    trainer.model.eval()
    with torch.no_grad():
        assert not torch.equal(trainer.model(input_ids=ids).logits, before), "training changed nothing"
