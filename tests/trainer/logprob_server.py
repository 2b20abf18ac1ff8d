"""TEST DOUBLE for a served teacher: vLLM's `/v1/completions` prompt-log-prob API (and the legacy
`echo` + `logprobs` style) on 127.0.0.1, answered by a real `transformers` model, so the values
are a real teacher's. It is not vLLM: only the response shapes of those two request styles are
reproduced. `fail_first` makes the first requests answer 500 (the client must retry)."""

from __future__ import annotations

import threading
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from openai_double import LocalServer


class LogprobServer(LocalServer):
    def __init__(self, model_dir: str, *, fail_first: int = 0, max_logprobs: int = 20, refuse_all: bool = False) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.name = str(model_dir)
        self.fail_first, self.requests = fail_first, 0
        self.max_logprobs, self.refuse_all = max_logprobs, refuse_all  # vLLM's --max-logprobs (20 by default)
        self.lock = threading.Lock()
        self.serve(Starlette(routes=[Route("/v1/completions", self.completions, methods=["POST"])]))

    async def completions(self, request: Request) -> JSONResponse:
        body = await request.json()
        with self.lock:
            self.requests += 1
            if self.requests <= self.fail_first:
                return JSONResponse({"error": {"message": "scripted 500"}}, status_code=500)
            k = int(body.get("prompt_logprobs") or 0)
            if k > self.max_logprobs:  # vLLM's answer to more prompt log-probs than the server allows
                return JSONResponse({"error": {"message": f"Requested prompt logprobs of {k}, which is greater than "
                                               f"max allowed: {self.max_logprobs}"}}, status_code=400)
            if self.refuse_all:
                return JSONResponse({"error": {"message": "scripted: this teacher scores nothing"}}, status_code=400)
            ids = body["prompt"]
            with torch.no_grad():
                logprobs = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), -1)
        # position j scores token j given tokens < j (the first position has no score)
        if body.get("echo"):
            token_logprobs = [None] + [float(logprobs[j - 1, ids[j]]) for j in range(1, len(ids))]
            choice = {"index": 0, "text": "", "finish_reason": "length",
                      "logprobs": {"tokens": [str(i) for i in ids], "token_logprobs": token_logprobs,
                                   "top_logprobs": None, "text_offset": list(range(len(ids)))}}
        else:
            k = int(body.get("prompt_logprobs") or 0)
            entries: list[dict[str, Any] | None] = [None]
            for j in range(1, len(ids)):
                row = logprobs[j - 1]
                top = row.topk(k).indices.tolist() if k else []
                entries.append({str(t): {"logprob": float(row[t]), "rank": int((row > row[t]).sum()) + 1,
                                         "decoded_token": str(t)} for t in [ids[j], *top]})
            choice = {"index": 0, "text": "", "finish_reason": "length", "logprobs": None, "prompt_logprobs": entries}
        return JSONResponse({"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
                             "choices": [choice], "usage": {"prompt_tokens": len(ids), "completion_tokens": 1,
                                                            "total_tokens": len(ids) + 1}})
