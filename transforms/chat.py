"""Chat conversations as Hugging Face builds them for Gemma 3 / MedGemma: content, messages, template, image expansion.

A conversation is a list of role messages, each {"role": "system"|"user"|"assistant", "content": [item, …]},
an item being {"type": "image"} (a placeholder; the inference API puts the PIL image under "image") or
{"type": "text", "text": str}. Records store exactly this (images as placeholders); the chat ids are
this conversation rendered by the model's template with every image expanded as Gemma3Processor does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

IMAGE_TOKENS_PER_IMAGE = 256  # Gemma 3 / MedGemma: mm_tokens_per_image

Item = dict[str, Any]  # a content item: {"type": "image"} or {"type": "text", "text": str}
Message = dict[str, Any]  # a role message: {"role": …, "content": [Item, …]}


def image_item() -> Item:
    """A content item marking one image's place."""
    return {"type": "image"}


def text_item(text: str) -> Item:
    """A content item holding text (kept verbatim; the template trims it)."""
    return {"type": "text", "text": text}


def images_then_prompt(n_images: int, prompt: str = "") -> list[Item]:
    """2D order of MedGemma's notebooks: each image ([prior, current] for longitudinal), then the prompt."""
    return [image_item() for _ in range(n_images)] + ([text_item(prompt)] if prompt else [])


def prompt_then_images(prompt: str, n_images: int, labels: Sequence[str] = ()) -> list[Item]:
    """Volume and slide order: the prompt, then each image, each followed by its label text ("SLICE n") if any."""
    content = [text_item(prompt)] if prompt else []
    for i in range(n_images):
        content.append(image_item())
        if i < len(labels) and labels[i]:
            content.append(text_item(labels[i]))
    return content


def conversation(content: list[Item], response: str | None = None, system_prompt: str = "") -> list[Message]:
    """Role messages: an optional system message, the user turn, and the model's response when given."""
    messages: list[Message] = [{"role": "system", "content": [text_item(system_prompt)]}] if system_prompt else []
    messages.append({"role": "user", "content": content})
    if response is not None:
        messages.append({"role": "assistant", "content": [text_item(response)]})
    return messages


def with_images(messages: list[Message], images: Sequence[Any]) -> list[Message]:
    """The same messages with each image placeholder carrying its image, in order (what a processor takes)."""
    it = iter(images)
    out = []
    for message in messages:
        content = [dict(item, image=next(it)) if item["type"] == "image" else dict(item) for item in message["content"]]
        out.append({"role": message["role"], "content": content})
    return out


def user_messages(content: list[Item], images: Sequence[Any], system_prompt: str = "") -> list[Message]:
    """What serving passes to processor.apply_chat_template(..., add_generation_prompt=True): the records'
    messages without the response, each image placeholder carrying its image."""
    return with_images(conversation(content, None, system_prompt), images)


def count_images(messages: list[Message]) -> int:
    """Number of image items in a conversation."""
    return sum(item["type"] == "image" for m in messages for item in m["content"])


def _content_text(content: Any, image_marker: str) -> str:
    if isinstance(content, str):
        return content.strip()
    if not isinstance(content, (list, tuple)):
        raise ValueError("message content must be a string or a list of items")
    parts = []
    for item in content:
        if item["type"] == "image":
            parts.append(image_marker)
        elif item["type"] == "text":
            parts.append(item["text"].strip())
    return "".join(parts)


def render_gemma3(
    messages: list[Message],
    add_generation_prompt: bool = False,
    bos: str = "<bos>",
    image_marker: str = "<start_of_image>",
) -> str:
    """Gemma 3's chat template: <bos>, then per turn <start_of_turn>{user|model}\\n{content}<end_of_turn>\\n.

    Text items are trimmed and concatenated with images (each one `image_marker`); a leading system
    message is no turn of its own: its first text, untrimmed, plus "\\n\\n" opens the first user turn.
    Roles must alternate user/assistant. add_generation_prompt appends "<start_of_turn>model\\n".
    """
    prefix, turns = "", messages
    if messages and messages[0]["role"] == "system":
        content = messages[0]["content"]
        prefix = (content if isinstance(content, str) else content[0]["text"]) + "\n\n"
        turns = messages[1:]
    out = [bos]
    for i, message in enumerate(turns):
        if (message["role"] == "user") != (i % 2 == 0):
            raise ValueError("conversation roles must alternate user/assistant/user/assistant/...")
        role = "model" if message["role"] == "assistant" else message["role"]
        out.append(f"<start_of_turn>{role}\n" + (prefix if i == 0 else ""))
        out.append(_content_text(message["content"], image_marker))
        out.append("<end_of_turn>\n")
    if add_generation_prompt:
        out.append("<start_of_turn>model\n")
    return "".join(out)


def render_jinja(template: str, messages: list[Message], add_generation_prompt: bool, tokens: dict[str, Any]) -> str:
    """A Hugging Face chat template (Jinja) rendered the way transformers renders it (sandboxed,
    trim_blocks and lstrip_blocks, raise_exception available), with the tokenizer's special tokens
    (bos_token, eos_token, …) as variables."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> NoReturn:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **tokens
        )
    except TemplateError as exc:
        raise ValueError(f"chat template: {exc}") from None


def expand_images(text: str, boi: str, image_token: str, eoi: str, n: int = IMAGE_TOKENS_PER_IMAGE) -> str:
    """Each `boi` becomes "\\n\\n" + boi + n × image_token + eoi + "\\n\\n", as Gemma3Processor expands it."""
    return text.replace(boi, f"\n\n{boi}{image_token * n}{eoi}\n\n")
