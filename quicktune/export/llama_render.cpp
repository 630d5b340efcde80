// Renders chat conversations with llama.cpp's own chat-template engine, the way llama-server
// does for /v1/chat/completions (and so the way Ollama serves a model whose GGUF template it
// prefers). Built by quicktune (quicktune/export/llama_template.py) together with llama.cpp's
// common/ chat code of the installed llama-cpp-python version, linked to that wheel's libllama.
//
// stdin, one JSON object:
//   {"gguf": "model.gguf"}                       read the template, BOS/EOS and add_bos from the
//                                                GGUF (vocabulary only), as llama-server does; or
//   {"template": "...", "bos": "<s>", "eos": "</s>", "add_bos": true, "add_eos": false}
//   plus "conversations": [[{"role": "...", "content": "..."}, ...], ...]
// stdout: {"enable_thinking": bool, "add_bos": bool, "bos": "...",
//          "results": [{"prompt": "..."} or {"error": "..."}, ...]}
// exit status 3: the template fails where llama-server would fail to start (message on stderr).
// "prompt" is the text llama-server tokenizes (with add_special: BOS is then added as a token
// when add_bos is true, which is why the template's own leading BOS text is dropped).

#include "chat.h"
#include "common.h"
#include "json.h"
#include "llama.h"

#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>

static void quiet(enum ggml_log_level, const char *, void *) {}

int main() {
    std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    common_json request;
    try {
        request = common_json::parse(input);
    } catch (const std::exception & e) {
        std::cerr << "bad request: " << e.what() << "\n";
        return 2;
    }
    llama_log_set(quiet, nullptr);

    llama_model * model = nullptr;
    common_chat_templates_ptr templates;
    bool enable_thinking = false;
    std::string bos = request.value("bos", std::string());
    std::string eos = request.value("eos", std::string());
    bool add_bos = request.value("add_bos", false);
    bool add_eos = request.value("add_eos", false);
    try {
        std::string gguf = request.value("gguf", std::string());
        if (!gguf.empty()) {
            llama_model_params params = llama_model_default_params();
            params.vocab_only = true;
            model = llama_model_load_from_file(gguf.c_str(), params);
            if (model == nullptr) {
                std::cerr << "llama.cpp could not load " << gguf << "\n";
                return 2;
            }
            // No override: the GGUF's own tokenizer.chat_template, BOS/EOS and add_bos/add_eos,
            // exactly what llama-server reads when Ollama starts it without --chat-template.
            templates = common_chat_templates_init(model, "");
            const llama_vocab * vocab = llama_model_get_vocab(model);
            add_bos = llama_vocab_get_add_bos(vocab);
            add_eos = llama_vocab_get_add_eos(vocab);
            bos = llama_vocab_bos(vocab) == LLAMA_TOKEN_NULL ? "" : common_token_to_piece(vocab, llama_vocab_bos(vocab), true);
            eos = llama_vocab_eos(vocab) == LLAMA_TOKEN_NULL ? "" : common_token_to_piece(vocab, llama_vocab_eos(vocab), true);
        } else {
            templates = common_chat_templates_init(nullptr, request.at("template").get<std::string>(), bos, eos);
        }
        // llama-server: thinking is on when the template supports it and --reasoning is not "off"
        // (Ollama passes no --reasoning and, without a `think` request option, no chat_template_kwargs).
        enable_thinking = common_chat_templates_support_enable_thinking(templates.get());
    } catch (const std::exception & e) {
        // llama-server fails to start on the same error (server-context.cpp, "chat template parsing error").
        std::cerr << "llama-server would not start with this chat template: " << e.what() << "\n";
        return 3;
    }

    common_json results = common_json::array();
    for (const auto & conversation : request.at("conversations")) {
        common_json result = common_json::object();
        try {
            common_chat_templates_inputs inputs;
            inputs.messages = common_chat_msgs_parse_oaicompat(conversation);
            inputs.use_jinja = true;
            inputs.add_generation_prompt = true;
            inputs.reasoning_format = COMMON_REASONING_FORMAT_DEEPSEEK;  // llama-server's default
            inputs.enable_thinking = enable_thinking;
            std::string prompt = common_chat_templates_apply(templates.get(), inputs).prompt;
            if (model == nullptr) {
                // Without a model the templates do not know add_bos/add_eos; strip as chat.cpp does.
                if (add_bos && !bos.empty() && prompt.rfind(bos, 0) == 0) {
                    prompt = prompt.substr(bos.size());
                }
                if (add_eos && !eos.empty() && prompt.size() >= eos.size() &&
                    prompt.compare(prompt.size() - eos.size(), eos.size(), eos) == 0) {
                    prompt = prompt.substr(0, prompt.size() - eos.size());
                }
            }
            result["prompt"] = prompt;
        } catch (const std::exception & e) {
            result["error"] = std::string(e.what());
        }
        results.push_back(result);
    }

    common_json out = common_json::object();
    out["enable_thinking"] = enable_thinking;
    out["add_bos"] = add_bos;
    out["bos"] = bos;
    out["results"] = results;
    std::cout << out.dump_safe() << std::endl;
    if (model != nullptr) {
        llama_model_free(model);
    }
    return 0;
}
