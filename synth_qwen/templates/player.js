const players = [...document.querySelectorAll('.player')].map((el, index) => {
  const img = el.querySelector('img'), counter = el.querySelector('.counter'), range = el.querySelector('input');
  const playButton = el.querySelector('.play'), note = el.querySelector('.note');
  const last = +el.dataset.last, frames = el.dataset.frames, scope = el.closest('.episode');
  let step = -1, timer = null;
  function show(k) {
    k = Math.max(0, Math.min(last, k));
    if (k === step) return;
    step = k; el.dataset.step = k; counter.textContent = k; range.value = k; note.textContent = '';
    img.src = frames + k + '.png';
    if (k < last) new Image().src = frames + (k + 1) + '.png';  // the next frame, while this one shows
    scope.querySelectorAll('.turn').forEach(row => row.classList.toggle('current',
      +row.dataset.first <= k && k <= +row.dataset.last));
  }
  img.addEventListener('error', () => fetch(img.src).then(r => r.text()).then(t => { note.textContent = t; }));
  function toggle() {
    if (timer) { clearInterval(timer); timer = null; playButton.textContent = 'play'; return; }
    playButton.textContent = 'pause';
    timer = setInterval(() => { if (step >= last) toggle(); else show(step + 1); }, 1000 / FPS);
  }
  el.querySelector('.prev').onclick = () => show(step - 1);
  el.querySelector('.next').onclick = () => show(step + 1);
  playButton.onclick = toggle;
  range.oninput = () => show(+range.value);
  scope.querySelectorAll('[data-goto]').forEach(a => a.addEventListener('click', ev => {
    ev.preventDefault(); show(+a.dataset.goto); }));
  show(+el.dataset.start);
  return {show, toggle, get step() { return step; }, scope};
});
document.addEventListener('keydown', ev => {
  if (ev.target.tagName === 'INPUT' && ev.target.type !== 'range') return;
  if (ev.key === 'ArrowRight') players.forEach(p => p.show(p.step + 1));
  else if (ev.key === 'ArrowLeft') players.forEach(p => p.show(p.step - 1));
  else if (ev.key === ' ') players.forEach(p => p.toggle());
  else return;
  ev.preventDefault();
});
function gotoTurn(turn) {  // the pair page: the same turn in both episodes
  players.forEach(p => {
    const rows = [...p.scope.querySelectorAll('.turn')];
    const row = rows.find(r => +r.dataset.turn === turn) || rows[rows.length - 1];
    if (!row) return;
    p.show(+row.dataset.first);
    row.scrollIntoView({block: 'start'});
  });
  const box = document.getElementById('turn'); if (box) box.value = turn;
}
const turnForm = document.getElementById('turn-form');
if (turnForm) {
  turnForm.onsubmit = ev => { ev.preventDefault(); gotoTurn(+document.getElementById('turn').value); };
  if (+turnForm.dataset.turn >= 0) gotoTurn(+turnForm.dataset.turn);
}
