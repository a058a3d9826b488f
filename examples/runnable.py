"""refinegraph for LangChain users, both ways round.

1. A graph as a Runnable: `prompt | as_runnable("self-consistency")` returns an AIMessage
   whose content is the voted answer and whose response_metadata names the run.
2. With --langchain, the graph's model is itself a LangChain chat model (the `langchain`
   backend): here langchain_openai's ChatOpenAI pointed at the embedded llama.cpp server.

    python examples/runnable.py "What is 12 + 7?"
    python examples/runnable.py --langchain "What is 12 + 7?"
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from langchain_core.prompts import ChatPromptTemplate

from refinegraph.budget import Budget
from refinegraph.embed import as_runnable
from refinegraph.models import LangChainModel


def embedded_chat_model() -> Any:
    """ChatOpenAI talking to the embedded model's OpenAI-compatible server."""
    from langchain_openai import ChatOpenAI

    from refinegraph.models.local import ensure_server

    address, _ = ensure_server()
    return ChatOpenAI(base_url=f"{address}/v1", model="smollm2-135m-instruct", api_key="not-needed")


async def main(question: str, use_langchain_model: bool = False) -> Any:
    models = {"local": LangChainModel("local", embedded_chat_model())} if use_langchain_model else None
    refine = as_runnable("self-consistency", params={"n": 3, "max_tokens": 96}, budget=Budget(max_tokens=3000),
                         models=models)
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer the arithmetic question. End with 'The answer is N.'"),
        ("human", "{question}"),
    ])
    message = await (prompt | refine).ainvoke({"question": question})
    meta = message.response_metadata
    print(f"answer: {message.content!r}")
    print(f"run {meta['run_id']}  stop={meta['stop_reason']}  calls={meta['model_calls']}  "
          f"tokens={message.usage_metadata['total_tokens']}")
    return message


if __name__ == "__main__":
    args = sys.argv[1:]
    flag = "--langchain" in args
    words = [a for a in args if a != "--langchain"]
    asyncio.run(main(" ".join(words) or "What is 12 + 7?", flag))
