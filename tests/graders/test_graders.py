"""The pure graders: OpenAI's documented examples give OpenAI's rewards, and invalid graders are 400s naming
the field. Model graders get a plain judge function that reads the rendered prompt the way a judge would."""

from __future__ import annotations

import re
from typing import Any

import pytest

from openft.graders import ERROR_DETAILS, ERROR_FLAGS, GraderInvalid, grade, validate
from openft.graders.base import SampleError
from openft.graders.templates import render
from openft.graders.text_similarity import similarity


def sample_of(text: str, output_json: Any = None, output_tools: list[Any] | None = None) -> dict[str, Any]:
    return {"output_text": text, "output_json": output_json, "output_tools": output_tools or [], "choices": []}


# --- templates ---------------------------------------------------------------------------------------------


def test_templates_walk_dotted_paths_list_indexes_and_quoted_keys() -> None:
    sample = sample_of('{"a": [1, {"b": "x"}]}', output_json={"a": [1, {"b": "x"}], "k y": True})
    item = {"answer": "Paris", "nested": {"list": [10, 20]}, "n": 3}
    text = "{{ item.answer }}|{{item.nested.list[1]}}|{{ sample.output_json.a[1].b }}|{{ sample.output_json['k y'] }}"
    assert render(text, sample, item) == "Paris|20|x|true"
    assert render("{{ item.nested }} {{item.n}} {{ item.nested.list.0 }}", sample, item) == '{"list": [10, 20]} 3 10'
    assert render("no tags, {single} braces", sample, item) == "no tags, {single} braces"


def test_a_missing_path_is_a_sample_error_not_an_invalid_grader() -> None:
    grader = {
        "type": "string_check",
        "name": "g",
        "input": "{{ item.missing.deep }}",
        "reference": "x",
        "operation": "eq",
    }
    validate(grader)  # the grader itself is fine
    result = grade(grader, sample_of("x"), {"present": 1})
    assert result.reward == 0.0
    assert result.errors["invalid_variable_error"] is True
    assert result.error_message is not None and "item.missing" in result.error_message
    # output_json is null when the sample is not JSON: a path into it is missing too
    grader["input"] = "{{ sample.output_json.answer }}"
    assert grade(grader, sample_of("not json"), {}).errors["invalid_variable_error"] is True


@pytest.mark.parametrize(
    ("template", "why"),
    [("{{ other.x }}", "namespace must be `item` or `sample`"), ("{{ item.x + 1 }}", "not a variable path"),
     ("{{ item.x | upper }}", "not a variable path"), ("{{ }}", "not a variable path")],
)  # fmt: skip
def test_template_expressions_and_other_namespaces_are_invalid(template: str, why: str) -> None:
    grader = {"type": "string_check", "name": "g", "input": template, "reference": "x", "operation": "eq"}
    with pytest.raises(GraderInvalid, match=re.escape(why)) as caught:
        validate(grader)
    assert caught.value.param == "grader.input"


# --- string_check ------------------------------------------------------------------------------------------


def test_string_check_openapi_example() -> None:
    # GraderStringCheck's and /validate's example
    grader = {
        "type": "string_check",
        "name": "Example string check grader",
        "input": "{{sample.output_text}}",
        "reference": "{{item.label}}",
        "operation": "eq",
    }
    assert validate(grader) is None
    assert grade(grader, sample_of("positive"), {"label": "positive"}).reward == 1.0
    assert grade(grader, sample_of("Positive"), {"label": "positive"}).reward == 0.0


@pytest.mark.parametrize(
    ("operation", "text", "reference", "reward"),
    [("eq", "Paris", "Paris", 1.0), ("eq", "Paris ", "Paris", 0.0), ("ne", "Paris", "paris", 1.0),
     ("ne", "Paris", "Paris", 0.0), ("like", "It is Paris.", "Paris", 1.0), ("like", "It is paris.", "Paris", 0.0),
     ("ilike", "IT IS PARIS.", "Paris", 1.0), ("ilike", "It is Rome.", "Paris", 0.0)],
)  # fmt: skip
def test_string_check_operations(operation: str, text: str, reference: str, reward: float) -> None:
    grader = {"type": "string_check", "name": "g", "input": "{{sample.output_text}}", "reference": reference,
              "operation": operation}  # fmt: skip
    result = grade(grader, sample_of(text), {})
    assert (result.reward, result.failed) == (reward, False)


def test_string_check_result_shape_matches_openai_metadata_errors() -> None:
    grader = {"type": "string_check", "name": "g", "input": "a", "reference": "a", "operation": "eq"}
    result = grade(grader, sample_of(""), {})
    assert set(result.metadata_errors()) == set(ERROR_FLAGS) | set(ERROR_DETAILS)
    assert not any(result.metadata_errors().values())
    assert result.sub_rewards == {} and result.error_message is None and result.execution_time >= 0


# --- text_similarity ---------------------------------------------------------------------------------------

METRICS = ["fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"]


@pytest.mark.parametrize("metric", METRICS)
def test_text_similarity_identical_texts_score_near_one_and_unrelated_zero(metric: str) -> None:
    grader = {"type": "text_similarity", "name": "Example text similarity grader", "input": "{{sample.output_text}}",
              "reference": "{{item.label}}", "evaluation_metric": metric}  # fmt: skip
    same = grade(grader, sample_of("fuzzy wuzzy was a bear"), {"label": "fuzzy wuzzy was a bear"})
    # METEOR's fragmentation penalty keeps even an exact match a little under 1 (0.996 for five words)
    assert same.reward == pytest.approx(1.0, abs=0.005) and not same.failed
    other = grade(grader, sample_of("completely different words here"), {"label": "fuzzy wuzzy was a bear"})
    assert other.reward < 0.35


def test_text_similarity_known_values() -> None:
    hyp, ref = "the cats were sitting on the mat", "the cat sat on the mat"
    assert similarity("fuzzy_match", hyp, ref) == pytest.approx(0.7778, abs=1e-4)  # Indel ratio: 2*21/54
    assert similarity("rouge_1", hyp, ref) == pytest.approx(2 * 4 / 13)  # 4 shared unigrams of 7 and 6
    assert similarity("rouge_2", hyp, ref) == pytest.approx(2 * 2 / 11)  # "on the", "the mat"
    assert similarity("rouge_l", hyp, ref) == pytest.approx(2 * 4 / 13)
    # METEOR without WordNet: "cats"/"cat" meet through the Porter stem, "sitting"/"sat" do not (WordNet would)
    assert similarity("meteor", hyp, ref) == pytest.approx(0.7934, abs=1e-4)
    assert 0 < similarity("bleu", hyp, ref) < similarity("gleu", hyp, ref) < 1
    assert similarity("bleu", "", ref) == 0.0


def test_cosine_needs_an_embeddings_function() -> None:
    grader = {"type": "text_similarity", "name": "g", "input": "{{sample.output_text}}", "reference": "b",
              "evaluation_metric": "cosine"}  # fmt: skip
    with pytest.raises(GraderInvalid, match="embeddings model") as caught:
        validate(grader)
    assert caught.value.param == "grader.evaluation_metric"

    def embed(texts: list[str]) -> list[list[float]]:  # a bag of letters a and b: enough to check the arithmetic
        return [[float(t.count("a")), float(t.count("b"))] for t in texts]

    assert grade(grader, sample_of("ab"), {}, embed=embed).reward == pytest.approx(1 / 2**0.5)


# --- score_model / label_model -----------------------------------------------------------------------------


def comparing_judge(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """Answers like a judge asked OpenAI's example question: 1.0 when the two answers in the prompt agree."""
    text = messages[-1]["content"]
    reference = re.search(r"Reference answer: (.*)", text).group(1).strip()  # type: ignore[union-attr]
    answer = re.search(r"Model answer: (.*)", text).group(1).strip()  # type: ignore[union-attr]
    return "1.0" if reference == answer else "0.0"


SCORE_EXAMPLE = {  # the /fine_tuning/alpha/graders/run example ("Score text alignment")
    "type": "score_model",
    "name": "Example score model grader",
    "input": [
        {
            "role": "user",
            "content": [
                {
                    "type": "input_text",
                    "text": "Score how close the reference answer is to the model answer on a 0-1 scale. Return only "
                    "the score.\n\nReference answer: {{item.reference_answer}}\n\nModel answer: {{sample.output_text}}",
                }
            ],
        }
    ],
    "model": "gpt-5-mini",
    "sampling_params": {"temperature": 1, "top_p": 1, "seed": 42},
}


def test_score_model_openapi_run_example_gives_reward_one() -> None:
    calls: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = []

    def judge(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
        calls.append((model, messages, params))
        return comparing_judge(model, messages, params)

    item = {"reference_answer": "fuzzy wuzzy was a bear"}
    result = grade(SCORE_EXAMPLE, sample_of("fuzzy wuzzy was a bear"), item, judge)
    assert result.reward == 1.0 and not result.failed  # OpenAI's example response: "reward": 1.0
    model, messages, params = calls[0]
    assert model == "gpt-5-mini"
    assert params == {"temperature": 1, "top_p": 1, "seed": 42}
    assert messages == [{"role": "user", "content": SCORE_EXAMPLE["input"][0]["content"][0]["text"]  # type: ignore[index]
                         .replace("{{item.reference_answer}}", "fuzzy wuzzy was a bear")
                         .replace("{{sample.output_text}}", "fuzzy wuzzy was a bear")}]  # fmt: skip
    assert result.judge_calls[0].answer == "1.0"
    assert grade(SCORE_EXAMPLE, sample_of("a different answer"), item, judge).reward == 0.0


@pytest.mark.parametrize(
    ("answer", "score"),
    [("0.75", 0.75), (" 1 ", 1.0), ('{"result": 0.5, "steps": []}', 0.5), ('{"score": 0.25}', 0.25),
     ("Score: 0.8", 0.8), ("7", 7.0)],
)  # fmt: skip
def test_score_model_reads_the_score_the_judge_wrote(answer: str, score: float) -> None:
    grader = {**SCORE_EXAMPLE, "range": [0, 10]}
    result = grade(grader, sample_of("x"), {"reference_answer": "y"}, lambda m, msgs, p: answer)
    assert (result.reward, result.failed) == (score, False)


@pytest.mark.parametrize("answer", ["great!", "between 0.2 and 0.4", "1.5", "-0.1", '{"result": "high"}', "nan"])
def test_an_unparsable_or_out_of_range_score_is_a_parse_error(answer: str) -> None:
    result = grade(SCORE_EXAMPLE, sample_of("x"), {"reference_answer": "y"}, lambda m, msgs, p: answer)
    assert result.reward == 0.0
    assert result.errors["model_grader_parse_error"] is True
    assert result.error_message


def test_a_failing_judge_is_a_server_error_for_this_sample() -> None:
    def judge(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
        raise RuntimeError("model is not loaded")

    result = grade(SCORE_EXAMPLE, sample_of("x"), {"reference_answer": "y"}, judge)
    assert result.reward == 0.0 and result.errors["model_grader_server_error"] is True
    assert result.error_details["model_grader_server_error_details"] == "RuntimeError: model is not loaded"


def test_model_grader_sampling_params_and_roles() -> None:
    grader = {
        "type": "score_model",
        "name": "g",
        "model": "judge",
        "input": [
            {"type": "message", "role": "developer", "content": {"type": "input_text", "text": "Grade strictly."}},
            {"role": "user", "content": "Answer: {{sample.output_text}}"},
        ],
        "sampling_params": {"max_completions_tokens": 16, "reasoning_effort": "low", "temperature": None},
    }
    seen: list[Any] = []
    grade(grader, sample_of("42"), {}, lambda m, msgs, p: seen.append((msgs, p)) or "1")  # type: ignore[func-returns-value]
    messages, params = seen[0]
    assert messages == [{"role": "system", "content": "Grade strictly."}, {"role": "user", "content": "Answer: 42"}]
    assert params == {"max_completion_tokens": 16}


LABEL_EXAMPLE = {  # GraderLabelModel's example
    "name": "First label grader",
    "type": "label_model",
    "model": "gpt-4o-2024-08-06",
    "input": [
        {
            "type": "message",
            "role": "system",
            "content": {
                "type": "input_text",
                "text": "Classify the sentiment of the following statement as one of positive, neutral, or negative",
            },
        },
        {"type": "message", "role": "user", "content": {"type": "input_text", "text": "Statement: {{item.response}}"}},
    ],
    "passing_labels": ["positive"],
    "labels": ["positive", "neutral", "negative"],
}


def sentiment_judge(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    statement = messages[-1]["content"].lower()
    return "positive" if "love" in statement else "Negative." if "hate" in statement else '{"result": "neutral"}'


@pytest.mark.parametrize(("response", "reward"), [("I love it", 1.0), ("I hate it", 0.0), ("It is a chair", 0.0)])
def test_label_model_openapi_example(response: str, reward: float) -> None:
    result = grade(LABEL_EXAMPLE, sample_of(""), {"response": response}, sentiment_judge)
    assert (result.reward, result.failed) == (reward, False)


def test_a_label_outside_labels_is_a_parse_error() -> None:
    result = grade(LABEL_EXAMPLE, sample_of(""), {"response": "x"}, lambda m, msgs, p: "ecstatic")
    assert result.reward == 0.0 and result.errors["model_grader_parse_error"] is True


@pytest.mark.parametrize(
    ("change", "param"),
    [({"passing_labels": ["great"]}, "grader.passing_labels"), ({"labels": []}, "grader.labels"),
     ({"model": None}, "grader.model"), ({"input": []}, "grader.input"),
     ({"input": [{"role": "robot", "content": "x"}]}, "grader.input[0].role"),
     ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
      "grader.input[0].content[0]")],
)  # fmt: skip
def test_invalid_model_graders(change: dict[str, Any], param: str) -> None:
    with pytest.raises(GraderInvalid) as caught:
        validate({**LABEL_EXAMPLE, **change})
    assert caught.value.param == param


def test_score_model_range_is_checked_and_a_model_grader_needs_a_judge() -> None:
    with pytest.raises(GraderInvalid) as caught:
        validate({**SCORE_EXAMPLE, "range": [1, 0]})
    assert caught.value.param == "grader.range"
    with pytest.raises(GraderInvalid, match="judge"):
        grade(SCORE_EXAMPLE, sample_of("x"), {"reference_answer": "x"}, judge=None)


# --- multi -------------------------------------------------------------------------------------------------


def test_multi_guide_example_with_output_tools() -> None:
    # the graders guide's multigrader: a tool call's name and arguments, half a point each
    grader = {
        "type": "multi",
        "name": "tool call",
        "graders": {
            "name": {"name": "name", "type": "string_check", "input": "{{sample.output_tools[0].function.name}}",
                     "operation": "eq", "reference": "{{item.name}}"},
            "arguments": {"name": "arguments", "type": "string_check",
                          "input": "{{sample.output_tools[0].function.arguments}}", "operation": "eq",
                          "reference": "{{item.arguments}}"},
        },
        "calculate_output": "0.5 * name + 0.5 * arguments",
    }  # fmt: skip
    item = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    tools = [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]
    result = grade(grader, sample_of("", output_tools=tools), item)
    assert result.reward == 0.5 and result.sub_rewards == {"name": 1.0, "arguments": 0.0} and not result.failed
    tools[0]["function"]["arguments"] = '{"city": "Paris"}'
    assert grade(grader, sample_of("", output_tools=tools), item).reward == 1.0


def test_multi_formula_functions_and_a_failed_sub_grader() -> None:
    grader = {
        "type": "multi",
        "name": "m",
        "graders": {
            "sim": {"type": "text_similarity", "name": "sim", "input": "{{sample.output_text}}",
                    "reference": "{{item.label}}", "evaluation_metric": "fuzzy_match"},
            "exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                      "reference": "{{item.label}}", "operation": "eq"},
        },
        "calculate_output": "min(1, max(sim, exact) ^ 2 + abs(-0) + floor(0.7) + ceil(0) * sqrt(4) * exp(0) * log(1))",
    }  # fmt: skip
    result = grade(grader, sample_of("abcd"), {"label": "abce"})
    assert result.sub_rewards == {"sim": 0.75, "exact": 0.0}
    assert result.reward == pytest.approx(0.75**2)
    missing = grade(grader, sample_of("abcd"), {})
    assert missing.reward == 0.0 and missing.errors["invalid_variable_error"] is True
    assert missing.sub_rewards == {"sim": 0.0, "exact": 0.0}
    assert missing.error_message and missing.error_message.startswith("sim: ")


def test_multi_openapi_example_formula_is_reported_invalid() -> None:
    # GraderMulti's example: `graders` is one grader (not a map), and the formula has an unmatched `)` and
    # names that are not graders — /validate must say so rather than run it
    grader = {
        "type": "multi",
        "name": "example multi grader",
        "graders": {"type": "text_similarity", "name": "example text similarity grader", "input": "The graded text",
                    "reference": "The reference text", "evaluation_metric": "fuzzy_match"},
        "calculate_output": "0.5 * text_similarity_score +  0.5 * string_check_score)",
    }  # fmt: skip
    with pytest.raises(GraderInvalid, match="must be a name a formula can use") as caught:
        validate(grader)
    assert caught.value.param == "grader.graders"
    grader["graders"]["name"] = "text_similarity_score"  # type: ignore[index]
    with pytest.raises(GraderInvalid, match="unmatched") as caught:
        validate(grader)
    assert caught.value.param == "grader.calculate_output"
    grader["calculate_output"] = "0.5 * text_similarity_score +  0.5 * string_check_score"
    with pytest.raises(GraderInvalid, match="`string_check_score`") as caught:
        validate(grader)
    grader["calculate_output"] = "0.5 * text_similarity_score + 0.5"
    result = grade(grader, sample_of(""), {})
    assert result.sub_rewards == {
        "text_similarity_score": pytest.approx(similarity("fuzzy_match", "The graded text", "The reference text"))
    }
    assert result.reward == pytest.approx(0.5 * result.sub_rewards["text_similarity_score"] + 0.5)


CHECK_X = {"type": "string_check", "name": "a", "input": "x", "reference": "x", "operation": "eq"}


@pytest.mark.parametrize(
    ("formula", "why"),
    [("a + unknown", "`unknown`"), ("__import__('os').system('x')", "may call only"),
     ("a.real", "may not contain"), ("open('f')", "may call only"), ("a if a else 1", "may not contain"),
     ("[a][0]", "may not contain"), ("", "non-empty")],
)  # fmt: skip
def test_multi_formula_is_a_whitelist(formula: str, why: str) -> None:
    grader = {"type": "multi", "name": "m", "calculate_output": formula, "graders": {"a": CHECK_X}}
    with pytest.raises(GraderInvalid, match=re.escape(why)) as caught:
        validate(grader)
    assert caught.value.param == "grader.calculate_output"


def test_multi_division_by_zero_is_a_sample_error() -> None:
    grader = {
        "type": "multi",
        "name": "m",
        "calculate_output": "1 / a",
        "graders": {"a": {**CHECK_X, "reference": "y"}},
    }
    result = grade(grader, sample_of(""), {})
    assert result.reward == 0.0 and result.errors["other_error"] is True


def test_sub_grader_params_name_the_path() -> None:
    grader = {"type": "multi", "name": "m", "calculate_output": "a",
              "graders": {"a": {"type": "python", "name": "a", "source": "def nope(): pass"}}}  # fmt: skip
    with pytest.raises(GraderInvalid) as caught:
        validate(grader)
    assert caught.value.param == "grader.graders.a.source"
    grader["graders"] = {"a": {**grader, "graders": {}}}
    with pytest.raises(GraderInvalid) as caught:
        validate(grader)
    assert caught.value.param == "grader.graders.a.type"  # no multi inside multi


@pytest.mark.parametrize(
    ("grader", "param"),
    [({"type": "nope", "name": "x"}, "grader.type"), ({"type": "string_check"}, "grader.name"),
     ({"type": "string_check", "name": "x", "input": "a", "reference": "b", "operation": "regex"}, "grader.operation"),
     ({"type": "text_similarity", "name": "x", "input": "a", "reference": "b", "evaluation_metric": "bertscore"},
      "grader.evaluation_metric"),
     ({"type": "string_check", "name": "x", "input": 3, "reference": "b", "operation": "eq"}, "grader.input")],
)  # fmt: skip
def test_invalid_graders_name_the_parameter(grader: dict[str, Any], param: str) -> None:
    with pytest.raises(GraderInvalid) as caught:
        validate(grader)
    assert caught.value.param == param


def test_sample_error_flags_are_openai_names() -> None:
    with pytest.raises(AssertionError):
        SampleError("not_a_flag", "x")


def test_a_missing_variable_in_a_judge_prompt_fails_before_the_judge_is_asked() -> None:
    asked: list[Any] = []
    result = grade(SCORE_EXAMPLE, sample_of("x"), {}, lambda m, msgs, p: asked.append(msgs) or "1")  # type: ignore[func-returns-value]
    assert result.reward == 0.0 and result.errors["invalid_variable_error"] is True
    assert asked == [] and result.judge_calls == []


def test_rouge_l_is_rouge_scores_number_without_its_quadratic_table() -> None:
    """openft computes ROUGE-L's LCS with rapidfuzz (rouge-score's pure-Python table took minutes at the request
    size limits); the F-measure must stay rouge-score's on any pair of texts."""
    import random

    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    words = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "far", "12", "x", "y", "Über"]
    for i in range(200):
        rng = random.Random(i)
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 30)))
        reference = " ".join(rng.choice(words) for _ in range(rng.randint(0, 30)))
        grader = {
            "type": "text_similarity",
            "name": "r",
            "input": text,
            "reference": reference,
            "evaluation_metric": "rouge_l",
        }
        expected = scorer.score(reference, text)["rougeL"].fmeasure
        assert grade(grader, {}, {}).reward == pytest.approx(expected, abs=1e-12)
