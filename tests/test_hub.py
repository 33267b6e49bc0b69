"""Push int8 models to a Hub and load them by repo id, with the real huggingface_hub and transformers
clients talking to the loopback test Hub (tests/hub_server.py)."""

import re

import pytest
import torch
from conftest import HUB, LEGACY_FIXTURES
from huggingface_hub import HfApi, ModelCard
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from optimum_int8 import INCModelForSeq2SeqLM, INCModelForSequenceClassification, Int8Config, pipeline, quantize_model
from optimum_int8.hub import HubAccessError

BART_FIXTURE = LEGACY_FIXTURES / "bart_seq2seq_dynamic"
SENTENCES = ["the quick brown fox jumps over the lazy dog", "int8 models are small"]


@pytest.fixture(scope="module")
def hub():
    with HUB.serving():
        yield HUB


@pytest.fixture
def repo_id(request) -> str:
    return "alice/" + re.sub(r"[^A-Za-z0-9-]+", "-", request.node.name).strip("-")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(BART_FIXTURE)


@pytest.fixture(scope="module")
def inputs(tokenizer) -> dict:
    encoded = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    return {**encoded, "decoder_input_ids": encoded["input_ids"][:, :5]}


def quantized_bart(modules_in_fp32=()):
    model = AutoModelForSeq2SeqLM.from_pretrained(BART_FIXTURE / "fp32")
    return quantize_model(model, Int8Config(modules_in_fp32=list(modules_in_fp32)))


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def test_push_uploads_one_commit_and_loads_back_by_repo_id(hub, repo_id, tokenizer, inputs, tmp_path):
    token = hub.token("alice")
    qmodel = quantized_bart(["lm_head"])
    commit = qmodel.push_to_hub(repo_id, token=token, tokenizer=tokenizer, license="apache-2.0")

    api = HfApi()
    files = set(api.list_repo_files(repo_id, token=token))
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md",
            "tokenizer.json", "tokenizer_config.json"} <= files
    assert [c.commit_id for c in api.list_repo_commits(repo_id, token=token)][0] == commit.oid
    assert len(api.list_repo_commits(repo_id, token=token)) == 2  # the repo's initial commit + the push

    loaded = INCModelForSeq2SeqLM.from_pretrained(repo_id, token=token, cache_dir=tmp_path / "cache")
    assert type(loaded) is type(qmodel)
    assert torch.equal(logits(loaded, inputs), logits(qmodel, inputs))
    assert loaded.config.quantization_config.manifest.fallback_modules == {"lm_head": "float32"}

    card = ModelCard.load(repo_id, token=token)
    assert card.data.license == "apache-2.0"
    assert {"int8", "optimum-int8", "dynamic-quantization"} <= set(card.data.tags)
    assert f'INCModelForSeq2SeqLM.from_pretrained("{repo_id}")' in card.text
    assert "1/33 Linear modules kept in fp32" in card.text


def test_card_snippet_loads_the_pushed_model(hub, tokenizer, inputs, tmp_path, monkeypatch):
    # A public repo: the snippet a user copies from the card needs no token.
    repo_id = "alice/snippet-int8"
    qmodel = quantized_bart()
    qmodel.push_to_hub(repo_id, token=hub.token("alice"), tokenizer=tokenizer)
    snippet = re.search(r"```python\n(.*?)```", ModelCard.load(repo_id).text, re.S).group(1)
    namespace = {}
    exec(snippet, namespace)
    assert torch.equal(logits(namespace["model"], inputs), logits(qmodel, inputs))
    assert namespace["tokenizer"](SENTENCES[0])["input_ids"] == tokenizer(SENTENCES[0])["input_ids"]


def test_push_to_existing_repo_is_one_commit_and_old_revisions_still_load(hub, repo_id, inputs, tmp_path):
    token = hub.token("alice")
    first, second = quantized_bart(), quantized_bart(["lm_head", "model.decoder.layers.0.fc2"])
    first_commit = first.push_to_hub(repo_id, token=token)
    commits_before = len(HfApi().list_repo_commits(repo_id, token=token))
    second.push_to_hub(repo_id, token=token, commit_message="Keep two modules in fp32")

    commits = HfApi().list_repo_commits(repo_id, token=token)
    assert len(commits) == commits_before + 1 and commits[0].title == "Keep two modules in fp32"
    latest = INCModelForSeq2SeqLM.from_pretrained(repo_id, token=token)
    old = INCModelForSeq2SeqLM.from_pretrained(repo_id, token=token, revision=first_commit.oid)
    assert torch.equal(logits(latest, inputs), logits(second, inputs))
    assert torch.equal(logits(old, inputs), logits(first, inputs))
    assert "2/33 Linear modules kept in fp32" in ModelCard.load(repo_id, token=token).text


def test_push_to_a_branch_loads_by_branch_name(hub, repo_id, inputs):
    token = hub.token("alice")
    main, branch = quantized_bart(), quantized_bart(["lm_head"])
    main.push_to_hub(repo_id, token=token)
    branch.push_to_hub(repo_id, token=token, revision="fallbacks")
    from_branch = INCModelForSeq2SeqLM.from_pretrained(repo_id, token=token, revision="fallbacks")
    from_main = INCModelForSeq2SeqLM.from_pretrained(repo_id, token=token)
    assert torch.equal(logits(from_branch, inputs), logits(branch, inputs))
    assert torch.equal(logits(from_main, inputs), logits(main, inputs))


@pytest.mark.parametrize("fault", ["disconnect", 422])
def test_interrupted_or_rejected_push_leaves_the_previous_revision(hub, repo_id, inputs, tmp_path, fault):
    token = hub.token("alice")
    first = quantized_bart()
    first.push_to_hub(repo_id, token=token)
    api = HfApi()
    head = api.model_info(repo_id, token=token).sha
    files = {f.rfilename: f.blob_id for f in api.model_info(repo_id, token=token, files_metadata=True).siblings}

    hub.fail_next_commit(fault)
    with pytest.raises(Exception, match="disconnected without sending a response" if fault == "disconnect" else "422"):
        quantized_bart(["lm_head"]).push_to_hub(repo_id, token=token)

    info = api.model_info(repo_id, token=token, files_metadata=True)
    assert info.sha == head
    assert {f.rfilename: f.blob_id for f in info.siblings} == files
    reloaded = INCModelForSeq2SeqLM.from_pretrained(repo_id, token=token, cache_dir=tmp_path / "fresh-cache")
    assert torch.equal(logits(reloaded, inputs), logits(first, inputs))


def test_save_pretrained_with_push_to_hub_pushes_the_saved_directory(hub, inputs, tmp_path):
    token = hub.token("alice")
    qmodel = quantized_bart()
    qmodel.save_pretrained(tmp_path / "bart-saved-int8", push_to_hub=True, token=token)
    repo_id = "alice/bart-saved-int8"
    assert (tmp_path / "bart-saved-int8" / "README.md").read_text() == ModelCard.load(repo_id, token=token).content
    loaded = INCModelForSeq2SeqLM.from_pretrained(repo_id, token=token)
    assert torch.equal(logits(loaded, inputs), logits(qmodel, inputs))


def test_handwritten_card_in_the_repo_is_kept(hub, repo_id):
    token = hub.token("alice")
    quantized_bart().push_to_hub(repo_id, token=token)
    HfApi().upload_file(path_or_fileobj=b"---\nlicense: mit\n---\n# My own card\n", path_in_repo="README.md",
                        repo_id=repo_id, token=token)
    quantized_bart(["lm_head"]).push_to_hub(repo_id, token=token)
    assert ModelCard.load(repo_id, token=token).text.strip() == "# My own card"


def test_base_model_comes_from_the_fp32_repo_id(hub, repo_id):
    token = hub.token("alice")
    AutoModelForSeq2SeqLM.from_pretrained(BART_FIXTURE / "fp32").push_to_hub("alice/bart-fp32", token=token)
    fp32 = AutoModelForSeq2SeqLM.from_pretrained("alice/bart-fp32", token=token)
    quantize_model(fp32).push_to_hub(repo_id, token=token)
    card = ModelCard.load(repo_id, token=token)
    assert card.data.base_model == "alice/bart-fp32"
    assert card.data.to_dict()["base_model_relation"] == "quantized"


@pytest.fixture(scope="module")
def private_repo(hub) -> str:
    repo_id = "alice/private-int8"
    quantized_bart().push_to_hub(repo_id, token=hub.token("alice"), private=True)
    return repo_id


@pytest.mark.parametrize(
    ("token_of", "expected"),
    [(None, "private and was requested without a token"), ("bob", "private and was requested with the token you passed"),
     ("stranger", "refused the token")],
)
def test_private_repo_refusals_name_the_repo_and_the_fix(hub, private_repo, tmp_path, token_of, expected):
    token = {None: None, "bob": hub.token("bob"), "stranger": "hf_not_a_real_token"}[token_of]
    with pytest.raises(HubAccessError) as excinfo:
        INCModelForSeq2SeqLM.from_pretrained(private_repo, token=token, cache_dir=tmp_path / "cache")
    message = str(excinfo.value)
    assert private_repo in message and expected in message
    assert "hf auth login" in message and 'token="hf_..."' in message
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__
    owner = INCModelForSeq2SeqLM.from_pretrained(private_repo, token=hub.token("alice"), cache_dir=tmp_path / "cache")
    assert owner.config.quantization_config.manifest is not None


def test_missing_repo_and_revision_errors(hub, private_repo, tmp_path):
    with pytest.raises(HubAccessError, match="'alice/no-such-model'.*no such repo"):
        INCModelForSeq2SeqLM.from_pretrained("alice/no-such-model", token=hub.token("alice"), cache_dir=tmp_path)
    with pytest.raises(HubAccessError, match="has no revision 'v9'.*existing branch, tag or commit"):
        INCModelForSeq2SeqLM.from_pretrained(private_repo, token=hub.token("alice"), revision="v9", cache_dir=tmp_path)


def test_push_without_write_access_is_a_clear_error(hub, private_repo):
    with pytest.raises(HubAccessError, match="Cannot push to 'alice/x-int8'.*without a token.*write access"):
        quantized_bart().push_to_hub("alice/x-int8")
    with pytest.raises(HubAccessError, match="not allowed to.*write access to the 'alice' namespace"):
        quantized_bart().push_to_hub("alice/x-int8", token=hub.token("bob"))


def test_pipeline_loads_model_and_tokenizer_by_repo_id(hub, repo_id, tokenizer):
    token = hub.token("alice")
    qmodel = quantized_bart(["lm_head"])
    qmodel.push_to_hub(repo_id, token=token, tokenizer=tokenizer, private=True)
    by_id = pipeline("summarization", model=repo_id, token=token, max_new_tokens=8, min_new_tokens=8)
    in_memory = pipeline("summarization", model=qmodel, tokenizer=tokenizer, max_new_tokens=8, min_new_tokens=8)
    assert by_id(SENTENCES) == in_memory(SENTENCES)
    assert by_id.model.config.quantization_config.manifest.fallback_modules == {"lm_head": "float32"}


def test_legacy_inc_repo_loads_by_repo_id(hub, tmp_path):
    fixture = LEGACY_FIXTURES / "bert_seqcls_dynamic"
    repo_id, token = "alice/bert-legacy-inc-int8", hub.token("alice")
    api = HfApi()
    api.create_repo(repo_id, token=token, private=True)
    api.upload_folder(repo_id=repo_id, folder_path=fixture, token=token, ignore_patterns=["fp32/*", "reference.json"])

    by_id = INCModelForSequenceClassification.from_pretrained(repo_id, token=token, cache_dir=tmp_path / "cache")
    local = INCModelForSequenceClassification.from_pretrained(fixture)
    tokenizer = AutoTokenizer.from_pretrained(repo_id, token=token, cache_dir=tmp_path / "cache")
    batch = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    assert type(by_id) is type(local)
    assert torch.equal(logits(by_id, batch), logits(local, batch))
    assert by_id.config.quantization_config.manifest.int8_modules == local.config.quantization_config.manifest.int8_modules
    with pytest.raises(HubAccessError, match="private and was requested without a token"):
        INCModelForSequenceClassification.from_pretrained(repo_id, cache_dir=tmp_path / "fresh")
