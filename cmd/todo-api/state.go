package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// savedState is the file format of -state: enough to restart the service
// without losing todos or idempotency answers.
type savedState struct {
	Users map[string]savedUser `json:"users"`
	// Answers are keyed by user + "\x00" + Idempotency-Key.
	Answers map[string]answer `json:"answers"`
}

type savedUser struct {
	Todos []todo `json:"todos"`
	Lists []list `json:"lists"`
}

// load reads the state file, if it exists.
func (a *api) load(path string) error {
	a.state = path
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var s savedState
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("reading state %s: %w", path, err)
	}
	for name, u := range s.Users {
		d := a.data(name)
		for _, t := range u.Todos {
			d.todos[t.ID] = &t
			d.todoOrder = append(d.todoOrder, t.ID)
			if n, err := strconv.ParseInt(t.ID, 10, 64); err == nil && t.Serial {
				a.lastID = max(a.lastID, n) // the sequence goes on after a restart
			}
		}
		for _, l := range u.Lists {
			d.lists[l.ID] = &l
			d.listOrder = append(d.listOrder, l.ID)
		}
	}
	if s.Answers != nil {
		a.answers = s.Answers
	}
	return nil
}

// save writes the state atomically (temporary file + rename). a.mu is held.
func (a *api) save() error {
	if a.state == "" {
		return nil
	}
	s := savedState{Users: map[string]savedUser{}, Answers: a.answers}
	for name, d := range a.users {
		var u savedUser
		for _, id := range d.todoOrder {
			u.Todos = append(u.Todos, *d.todos[id])
		}
		for _, id := range d.listOrder {
			u.Lists = append(u.Lists, *d.lists[id])
		}
		s.Users[name] = u
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(a.state), ".todo-api-state-*")
	if err != nil {
		return err
	}
	// After the rename there is nothing left to remove; before it, a
	// leftover temp file is only litter.
	defer func() { _ = os.Remove(tmp.Name()) }()
	if _, err := tmp.Write(b); err != nil {
		return errors.Join(err, tmp.Close())
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), a.state)
}
