// Renders an Ollama TEMPLATE with Go's text/template, the engine Ollama uses, over the
// data Ollama passes to it: .System (every system message, joined by blank lines) and
// .Messages (consecutive messages of one role merged). quicktune runs it to check that
// a Modelfile's TEMPLATE renders exactly the prompts the model was trained on.
//
// stdin:  {"template": "...", "conversations": [[{"role": "...", "content": "..."}, ...], ...]}
// stdout: ["rendered prompt", ...]
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Request struct {
	Template      string      `json:"template"`
	Conversations [][]Message `json:"conversations"`
}

func collate(messages []Message) (string, []*Message) {
	var system []string
	var merged []*Message
	for i := range messages {
		m := messages[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if n := len(merged); n > 0 && merged[n-1].Role == m.Role {
			merged[n-1].Content += "\n\n" + m.Content
			continue
		}
		merged = append(merged, &m)
	}
	return strings.Join(system, "\n\n"), merged
}

func main() {
	var request Request
	if err := json.NewDecoder(os.Stdin).Decode(&request); err != nil {
		fmt.Fprintln(os.Stderr, "bad request:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("ollama").Parse(request.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "template does not parse:", err)
		os.Exit(3)
	}
	rendered := []string{}
	for _, conversation := range request.Conversations {
		system, messages := collate(conversation)
		var out bytes.Buffer
		data := map[string]any{"System": system, "Messages": messages, "Tools": nil, "Response": "", "Prompt": ""}
		if err := tmpl.Execute(&out, data); err != nil {
			fmt.Fprintln(os.Stderr, "template failed:", err)
			os.Exit(4)
		}
		rendered = append(rendered, out.String())
	}
	json.NewEncoder(os.Stdout).Encode(rendered)
}
