// Client-side mutators. Their names and arguments match the mapping file
// (deploy/examples/todo/mapping.json): the sidecar replays each one against
// the REST API, and the next pull brings the server's truth.
export const mutators = {
  async createTodo(tx, {id, title}) {
    await tx.set(`todo/${id}`, {id, title, done: false});
  },
  async updateTodo(tx, {id, title, done}) {
    const cur = await tx.get(`todo/${id}`);
    if (!cur) return;
    await tx.set(`todo/${id}`, {...cur, ...(title !== undefined && {title}), ...(done !== undefined && {done})});
  },
  async deleteTodo(tx, {id}) {
    await tx.del(`todo/${id}`);
  },
};
