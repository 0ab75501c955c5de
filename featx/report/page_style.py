"""The report page's style and script: inline, tiny, dependency-free (the page must open offline for years)."""

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fff}
main{max-width:1100px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:14px 0 6px}.note{color:#555;font-size:13px}
table{border-collapse:collapse}.grid td,.grid th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.grid thead th{background:#f3f3f3}tr.best td{background:#fff6d5;font-weight:600}
tr.total th,tr.total td{background:#f7f7f7}
.side{display:flex;flex-wrap:wrap;gap:8px 40px;align-items:flex-start}.side>div{flex:0 1 auto;min-width:0}
.side .grid td{white-space:nowrap}.side .note{max-width:560px}
.side h3{margin-top:0}.recipe td{word-break:break-all}
.recipe th{text-align:left;padding:2px 12px 2px 0;color:#555;font-weight:500}.recipe td{font-family:monospace}
.confusion th,.confusion td{border:1px solid #ccc;padding:6px 10px;text-align:center;min-width:40px}
.confusion td.cell{cursor:pointer;font-weight:600}.confusion td.empty{cursor:default;color:#999;font-weight:400}
.confusion td.open{outline:3px solid #222;outline-offset:-3px}.corner{font-weight:400;color:#666;font-size:12px}
.thumbs{display:flex;flex-wrap:wrap;gap:8px}
figure.thumb{margin:0;width:104px;font-size:11px;color:#444}
figure.thumb img{display:block;max-width:96px;max-height:96px;border:1px solid #ccc}
figure.thumb figcaption{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.noimg{width:94px;height:70px;border:1px dashed #d62728;color:#d62728;font-size:11px;padding:2px;overflow:hidden}
.issues figure.thumb{width:128px}
.mapbox{display:flex;gap:16px;align-items:flex-start}.legend{list-style:none;padding:0;margin:0;font-size:13px}
.swatch{display:inline-block;width:11px;height:11px;border-radius:50%;margin-right:6px;vertical-align:-1px}
.swatch.ring{border:2px solid #111;width:8px;height:8px}
circle.pt{opacity:.8}circle.mistake{stroke:#111;stroke-width:1.6;opacity:1}circle.pt:hover{stroke:#000;stroke-width:2}
#tip{position:fixed;pointer-events:none;background:#fff;border:1px solid #999;padding:6px;font-size:12px;
word-break:break-all;
box-shadow:0 2px 8px rgba(0,0,0,.2);max-width:240px;z-index:10}#tip img{display:block;max-width:96px;max-height:96px}
"""

# Kept tiny and dependency-free. The first script records any error in the page itself, so a test
# (or a person) can see that the script broke; the last line marks the page as ready.
ERROR_HOOK = ("<script>window.addEventListener('error',function(e){document.documentElement"
               ".setAttribute('data-error',String(e.message||e))});</script>")
SCRIPT = """<script>
(function(){
  document.querySelectorAll('td.cell[data-cell]').forEach(function(cell){
    cell.addEventListener('click',function(){
      var target=document.getElementById('cell-'+cell.dataset.cell);
      document.querySelectorAll('.gallery').forEach(function(g){g.hidden=(g!==target)||!g.hidden;});
      document.querySelectorAll('td.cell').forEach(function(c){c.classList.toggle('open',c===cell&&!target.hidden);});
    });
  });
  var map=document.getElementById('fmap'),tip=document.getElementById('tip');
  if(map&&tip){
    map.addEventListener('mouseover',function(e){
      var p=e.target;if(!p.classList||!p.classList.contains('pt'))return;
      tip.textContent='';
      var img=p.dataset.t&&document.querySelector('img[data-key="'+p.dataset.t+'"]');
      if(img){var copy=document.createElement('img');copy.src=img.src;tip.appendChild(copy);}
      else{var none=document.createElement('div');none.textContent='(no thumbnail)';tip.appendChild(none);}
      [p.dataset.p,p.dataset.l+(p.dataset.n?' \\u2014 '+p.dataset.n:'')].forEach(function(t){
        var line=document.createElement('div');line.textContent=t;tip.appendChild(line);});
      tip.hidden=false;
    });
    map.addEventListener('mousemove',function(e){
      tip.style.left=(e.clientX+14)+'px';tip.style.top=(e.clientY+14)+'px';});
    map.addEventListener('mouseout',function(e){
      if(e.target.classList&&e.target.classList.contains('pt'))tip.hidden=true;});
  }
  document.documentElement.setAttribute('data-ready','1');
})();
</script>"""
